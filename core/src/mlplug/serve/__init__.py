"""``mlplug serve``: an OpenAI-compatible HTTP server with continuous batching.

Install with ``pip install "mlplug[serve]"`` (Starlette, uvicorn, Jinja2). Nothing here is
imported by ``import mlplug`` or by the other commands: ``mlplug serve`` imports the server
stack when it runs.

Modules:

* :mod:`mlplug.serve.command`: the command (load the model, start the scheduler and uvicorn).
* :mod:`mlplug.serve.scheduler`: continuous batching: one model step for every active request.
* :mod:`mlplug.serve.text`: streaming detokenisation and stop strings.
* :mod:`mlplug.serve.chat`: chat prompts from the model's ``tokenizer.chat_template``.
* :mod:`mlplug.serve.protocol`: OpenAI request bodies, checked field by field.
* :mod:`mlplug.serve.app`: the Starlette application (routes, server-sent events, errors).
"""
