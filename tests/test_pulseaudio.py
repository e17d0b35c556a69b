"""The sound-card path through real PortAudio: a PulseAudio server started by the test,
a null sink whose monitor is the input device, speech played into it at the card's
native 48 kHz; unloading the sink is an unplug (the station goes `offline`), loading it
again a replug (`online`, utterances again)."""
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import soxr

from daemon.sources import build_sources
from emoclap.audio import write_wav
from tests.speech import dialogue
from tests.stagekit import Watch, config

RATE = 48000
SCRIPT = [0.4, "Good morning, could I see the grey coat, please?", 0.8,
          "How much is it?", 0.8, "I think I will take it.", 0.6]


def pactl(env, *args) -> str:
    return subprocess.run(["pactl", *args], env=env, check=True, capture_output=True, text=True,
                          timeout=10).stdout.strip()


@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio server: its socket in tmp_path, one 48 kHz null sink `floor`
    whose monitor is the default input."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.fail("pulseaudio missing: run ./bootstrap test, which installs it")
    script = tmp_path / "default.pa"
    socket_path = tmp_path / "native"
    script.write_text(f"load-module module-native-protocol-unix socket={socket_path} auth-anonymous=1\n"
                      f"load-module module-null-sink sink_name=floor rate={RATE}\n"
                      "set-default-source floor.monitor\n")
    env = {**os.environ, "PULSE_SERVER": f"unix:{socket_path}", "HOME": str(tmp_path),
           "XDG_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(["pulseaudio", "-n", "-F", str(script), "--daemonize=no",
                               "--exit-idle-time=-1", "--use-pid-file=no", "--disallow-exit=yes"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode:
        assert time.monotonic() < deadline and server.poll() is None, "PulseAudio did not start"
        time.sleep(0.1)
    old = os.environ.get("PULSE_SERVER")
    os.environ["PULSE_SERVER"] = env["PULSE_SERVER"]  # PortAudio's ALSA pulse plugin reads it
    try:
        yield env
    finally:
        server.terminate()
        server.wait(10)
        if old is None:
            os.environ.pop("PULSE_SERVER", None)
        else:
            os.environ["PULSE_SERVER"] = old


def test_real_card_through_pulseaudio_unplug_and_replug(pulse, tmp_path):
    import sounddevice as sd

    sd._terminate()  # PortAudio lists devices once per initialisation: see this server's
    sd._initialize()
    audio, spans = dialogue(SCRIPT, tmp_path)
    loud = soxr.resample(audio, 16000, RATE).astype(np.float32)
    wav = tmp_path / "speech.wav"
    write_wav(wav, loud, RATE)

    cfg = config(f"""
[[stations]]
name = "counter"
source = "device"
device = "pulse"
sample_rate = {RATE}
role = "customer"
""")
    watch = Watch(cfg.stages.utterances)
    (source,) = build_sources(cfg)
    source.start()

    def play():
        subprocess.run(["paplay", "--device=floor", str(wav)], env=pulse, check=True, timeout=60)

    try:
        assert watch.poll(10, until=lambda w: "online" in w.states("counter")), watch.states("counter")
        play()
        watch.poll(5, until=lambda w: len(w.segments()) >= len(spans))
        first = len(watch.segments())
        sink = next(line.split()[0] for line in pactl(pulse, "list", "short", "modules").splitlines()
                    if "module-null-sink" in line)
        pactl(pulse, "unload-module", sink)  # the card is unplugged
        watch.poll(15, until=lambda w: w.states("counter")[-1:] == ["offline"])
        unplugged = watch.states("counter")[-1]
        pactl(pulse, "load-module", "module-null-sink", "sink_name=floor", f"rate={RATE}")
        pactl(pulse, "set-default-source", "floor.monitor")
        watch.poll(20, until=lambda w: w.states("counter")[-1:] == ["online"])
        replugged = watch.states("counter")[-1]
        play()
        watch.poll(10, until=lambda w: len(w.segments()) >= first + len(spans))
    finally:
        source.stop()
        source.join(10)
        watch.poll(0.5)
        watch.close()
    segments = watch.segments("counter")
    assert first == len(spans), (first, spans)
    assert unplugged == "offline" and replugged == "online"
    assert len(segments) >= first + len(spans)
    for seg in segments[:first]:  # 48 kHz in, 16 kHz utterances out, cut where the speech is
        u = seg.utterance
        assert u.audio.size == round(u.duration * 16000)
    assert not source.is_alive()
