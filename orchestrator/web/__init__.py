"""The daemon's web view: a live look at queues, leases, sessions and the event log,
served over HTTP on loopback next to the socket, behind an access token.

- ``access``: the 0600 file beside the socket naming the view's URL and token (``orch
  web`` reads it); imports nothing of the web server, so the CLI stays light;
- ``guard``: who may ask (token, cookie, Host, CSRF, Origin) and the headers every
  answer carries;
- ``markup``: HTML built from templates that escape every value unless told it is markup;
- ``pages``: the pages themselves, rendered from what the operations return;
- ``app``: the routes, the reads and actions behind them (through the daemon's reader
  threads and its group commit), and the server's start and stop inside the daemon's
  event loop;
- ``static/``: one stylesheet and one script (no inline script: the CSP forbids it).
"""
