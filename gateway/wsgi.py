"""WSGI entry point for gunicorn: ``gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app``.

gunicorn's gevent worker monkey-patches before it imports this module; never use ``--preload``
(kafka-python imported before patching hangs on ``send().get()``).
"""
from common import logs

logs.setup("gateway")

from gateway.app import create_app  # noqa: E402  (logging first, so start-up lines are formatted)

app = create_app()
