#!/usr/bin/env python3
"""Creates a blob container on an Azurite server (the Azure Storage emulator), for the az:// tests.

    python3 create_container.py <blob endpoint, e.g. http://127.0.0.1:10000> <container>

object_store never creates containers, and Azurite creates none by itself: this sends the one
`Create Container` request, signed with Azurite's well-known development account key (Shared Key
authorization), using the standard library only. An existing container is fine (exit status 0).
"""

import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.request
from email.utils import formatdate

# Azurite's fixed development account (documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-10-04"


def create(endpoint, container):
    date = formatdate(usegmt=True)
    # Path-style URL: the account is the first path component on the emulator, and the
    # canonicalized resource repeats it (as Azure's SDKs sign emulator requests).
    path = f"/{ACCOUNT}/{container}"
    string_to_sign = "\n".join(
        [
            "PUT",  # verb
            "",  # Content-Encoding
            "",  # Content-Language
            "",  # Content-Length (empty for 0)
            "",  # Content-MD5
            "application/octet-stream",  # Content-Type (urllib would add a form type)
            "",  # Date (x-ms-date is used)
            "",  # If-Modified-Since
            "",  # If-Match
            "",  # If-None-Match
            "",  # If-Unmodified-Since
            "",  # Range
            f"x-ms-date:{date}\nx-ms-version:{VERSION}",
            f"/{ACCOUNT}{path}\nrestype:container",
        ]
    )
    signature = base64.b64encode(
        hmac.new(base64.b64decode(KEY), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode("ascii")
    request = urllib.request.Request(
        f"{endpoint.rstrip('/')}{path}?restype=container",
        method="PUT",
        data=b"",
        headers={
            "Content-Type": "application/octet-stream",
            "x-ms-date": date,
            "x-ms-version": VERSION,
            "Authorization": f"SharedKey {ACCOUNT}:{signature}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        if e.code == 409:  # ContainerAlreadyExists
            return e.code
        body = e.read().decode("utf-8", "replace")
        raise SystemExit(f"creating container {container!r} at {endpoint} failed: HTTP {e.code}: {body}")


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    status = create(argv[0], argv[1])
    print(f"azurite container {argv[1]!r}: HTTP {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
