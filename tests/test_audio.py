import numpy as np
import pytest
import soundfile as sf

from emoclap.audio import AudioError, read_channels, read_mono


def tone(rate, seconds, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate, channels, fmt", [(44100, 2, "WAV"), (8000, 1, "WAV"),
                                                 (48000, 3, "FLAC"), (16000, 1, "FLAC")])
def test_any_rate_and_channel_count_becomes_16k(tmp_path, rate, channels, fmt):
    data = np.stack([tone(rate, 1.0, 300 + 100 * c) for c in range(channels)], axis=1)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt)
    multi = read_channels(path)
    assert multi.shape[0] == channels
    assert abs(multi.shape[1] - 16000) <= 1
    mono = read_mono(path)
    assert mono.ndim == 1 and mono.dtype == np.float32
    # The resampled tone keeps its frequency: its spectrum peaks at 300 Hz.
    peak = np.argmax(np.abs(np.fft.rfft(multi[0]))) * 16000 / multi.shape[1]
    assert abs(peak - 300) < 2


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioError, match="notes.wav: cannot read audio"):
        read_mono(bad)
