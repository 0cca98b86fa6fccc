"""A real OpenSSH `sshd` on 127.0.0.1 for the tests, standing for a team's SSH machine that holds the DVC
remote: its own config file, a temporary host key, one authorized key, a free port; started and stopped
by the test. Debian's openssh-server provides it (.ci/run installs it); without it the tests skip with
one line saying what to install, except under CI=true, where they fail.

A teammate is a HOME with ~/.ssh/known_hosts holding the server's host key, as `ssh` leaves it after the
first login: dvc-ssh (asyncssh) checks the host key against that file, so nothing turns checking off."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pipeline_repo import free_port, wait_for

SSHD = Path("/usr/sbin/sshd")  # sshd refuses to start by a relative name (it re-executes itself)
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")  # DVC's ssh remote talks SFTP
INSTALL_HINT = "no OpenSSH sshd (/usr/sbin/sshd) for the SSH DVC remote: install it with `apt-get install -y openssh-server`"


def require_sshd() -> None:
    """Skip (fail under CI=true) naming the package when sshd or its SFTP server is missing."""
    if SSHD.exists() and SFTP_SERVER.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(INSTALL_HINT + " (CI=true: .ci/run installs it; a missing sshd is a failure here)", pytrace=False)
    pytest.skip(INSTALL_HINT)


class Sshd:
    """sshd -D on 127.0.0.1:<free port> accepting one key (`client_key`) for the current user."""

    def __init__(self, root: Path):
        require_sshd()
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self.client_key = root / "id_ed25519"
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        for key in (root / "host_key", self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vaepipe-test", "-f", str(key)],
                           check=True, capture_output=True)
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            f"PidFile {root / 'sshd.pid'}",
            "StrictModes no",  # the test's files live under pytest's tmp dirs
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",  # CI runs as root: key only
            f"Subsystem sftp {SFTP_SERVER}",
            "",
        ]))

    def url(self, path: Path) -> str:
        """The DVC remote URL of `path` on this server (ssh://user@127.0.0.1:port/abs/path)."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def known_hosts_line(self) -> str:
        """The line `ssh` writes to ~/.ssh/known_hosts for this server after a first login."""
        host_key = " ".join((self.root / "host_key.pub").read_text().split()[:2])
        return f"[127.0.0.1]:{self.port} {host_key}\n"

    def home(self, path: Path) -> Path:
        """A teammate's HOME: ~/.ssh/known_hosts knows this server (the key itself is DVC's keyfile)."""
        (path / ".ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
        (path / ".ssh" / "known_hosts").write_text(self.known_hosts_line())
        return path

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege-separation directory
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stdout=subprocess.DEVNULL, stderr=(self.root / "sshd.log").open("wb"),
                                        start_new_session=True)

        def listening() -> bool:
            assert self.process.poll() is None, (self.root / "sshd.log").read_text()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    return sock.recv(4).startswith(b"SSH-")
            except OSError:
                return False

        wait_for(listening, timeout=30, interval=0.2, what=f"sshd on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # sshd -D and the sessions it forked
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class Tunnel:
    """`ssh -N -L`: OpenSSH's client, which checks the host key against ~/.ssh/known_hosts (dvc-ssh does not),
    forwarding a local port to the server's sshd; DVC's remote then names 127.0.0.1:<local port>."""

    def __init__(self, server: Sshd, home: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["ssh", "-N", "-p", str(server.port), "-i", str(server.client_key), "-L", f"{self.port}:127.0.0.1:{server.port}",
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes",
             "-o", f"UserKnownHostsFile={home / '.ssh' / 'known_hosts'}", f"{server.user}@127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HOME": str(home)})

    def wait(self) -> str | None:
        """None once the forward listens; the client's error if it exited (a host key it refused)."""
        def settled() -> bool:
            if self.process.poll() is not None:
                return True
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(settled, timeout=30, interval=0.2, what=f"ssh -L {self.port}")
        return None if self.process.poll() is None else self.process.stderr.read().decode()

    def url(self, server: Sshd, path: Path) -> str:
        return f"ssh://{server.user}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
