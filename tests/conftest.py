"""Shared fixtures.  Real servers (nginx, moto, gcp-storage-emulator) live in servers.py."""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = ["servers", "cluster"]
