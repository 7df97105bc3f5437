"""Serve a trained model over HTTP: an OpenAI-compatible transcription API and a page to try it.

    python -m asr.serve checkpoint=exp/an4/<run>/checkpoints/best.ckpt port=8000

- :mod:`asr.serve.batcher`: the worker thread that owns the model and runs requests that arrive
  together as one forward pass;
- :mod:`asr.serve.uploads`: the request body read with a size limit, the audio decoded from memory;
- :mod:`asr.serve.responses`: a transcript as OpenAI's ``json``, ``text``, ``srt``, ``vtt`` and
  ``verbose_json``, and OpenAI's error body;
- :mod:`asr.serve.app`: the FastAPI application (routes, errors, the page ``page.html``).
"""
