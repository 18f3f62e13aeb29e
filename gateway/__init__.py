"""The gateway: a small gevent Flask app that keeps the client sockets and talks to the functions.

``gateway.app.create_app`` builds it; gunicorn's gevent worker serves ``gateway.wsgi:app``
(see gateway/gunicorn.conf.py).
"""
