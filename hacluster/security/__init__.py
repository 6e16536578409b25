"""Security: TLS on every HTTP channel, certificates for operators without a PKI, credentials
by role.

``tokens`` (roles, the token format, hashed storage, constant-time checks), ``access`` (which
route needs which role; the verdict on one request), ``tls`` (server and client contexts, the
peer's certificate name, reloading on SIGHUP) and ``certs`` (a small CA and node certificates,
for ``hacluster certs``). This package imports none of its modules: ``config`` imports
``tokens`` and ``tls`` imports ``config``, and an import here would close that circle.
"""
