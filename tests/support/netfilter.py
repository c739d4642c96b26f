"""Dropping a loopback port's outgoing packets with nftables: a peer whose host or network vanished.

Unlike `FreezableProxy`, whose kernel still acknowledges what it no longer reads, nothing comes
back at all: no data, no ACKs, no answers to keepalive probes. Needs root and `nft` (Debian's
nftables, which .ci/run installs).
"""

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

# Debian puts nft in /usr/sbin, which a non-login shell's PATH may lack.
NFT = shutil.which("nft", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
needs_nft = pytest.mark.skipif(
    NFT is None or os.geteuid() != 0,
    reason="dropping packets needs root and nft (Debian's nftables; .ci/run installs it)")


@contextlib.contextmanager
def packets_from_port_dropped(port: int) -> Iterator[None]:
    """While inside, every TCP packet sent from `port` on this machine is dropped."""
    table = f"llmserve_test_drop_{port}"
    rules = (f"table inet {table} {{\n chain out {{\n"
             f"  type filter hook output priority 0; policy accept;\n"
             f"  tcp sport {port} drop\n }}\n}}\n")
    subprocess.run([NFT, "-f", "-"], input=rules, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run([NFT, "delete", "table", "inet", table], check=True)
