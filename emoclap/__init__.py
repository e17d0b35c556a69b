"""emoclap's core: the method and its file and wire contracts, free of I/O adapters.

No threads, no sockets, no torch. Both applications build on it: the daemon
(`daemon/`, adapters around these pieces) and the trainer (`trainer/`).

| module | noun |
|---|---|
| `audio` | the 16 kHz float32 form of audio: reading, writing, int16 → float, padded batches |
| `bundle` | the model bundle a trainer writes and a runtime verifies |
| `prompts` | the prompt-file format: parse, and rewrite with paraphrases |
| `segmenter` | streaming voice-activity segmentation (webrtcvad) of one station |
| `station` | one station's stream: resampling + segmenter + sequence numbers → utterances |
| `quality` | an utterance's quality and the abstain verdict (`insufficient`) |
| `zeroshot` | pole vectors and bipolar scores: one recipe for runtime, evaluation and export |
| `rolling` | rolling (smoothed) scores per station and role |
| `record` | the typed utterance record, from segmenter to event, history row and CSV row |
| `wire` | frames between stages (ZeroMQ payloads) |
| `scorestream` | the `/ws` protocol: messages, client sessions, the per-client send queue |
| `ingest` | the `/ingest` protocol: one audio-in session |
"""
