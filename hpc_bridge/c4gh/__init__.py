"""Crypt4GH on the service side: the site's key, recipients' public keys, and the session keys of
`.c4gh` inputs read from their headers on the login node. The job-side halves (encrypting outputs,
decrypting inputs) are `jobside/collect.py` and `jobside/decrypt.py`."""

import logging

# crypt4gh logs secret keys at DEBUG and an error for every header packet meant for someone else:
# neither may reach the service's logs, whatever level the site runs them at (failures reach
# them as this package's own messages).
logging.getLogger("crypt4gh").setLevel(logging.CRITICAL)
