"""The nginx configuration docs/server.md gives for several servers is valid nginx
(`nginx -t`), with a throwaway certificate in place of the example's paths. Skipped
when nginx is not installed (Debian: `apt-get install nginx-light`)."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def example() -> str:
    text = DOCS.read_text("utf-8")
    section = text[text.index("## Several servers") :]
    blocks = re.findall(r"```nginx\n(.*?)```", section, re.DOTALL)
    found = [b for b in blocks if "upstream kernex" in b]
    assert len(found) == 1, "docs/server.md: one nginx block with `upstream kernex`"
    return found[0]


def self_signed(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kernex.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = root / "fullchain.pem", root / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_the_documented_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    config = example()
    assert "proxy_pass http://kernex;" in config  # no URI part: the signed path unchanged
    cert, key = self_signed(tmp_path)
    config = config.replace("/etc/ssl/kernex/fullchain.pem", str(cert))
    config = config.replace("/etc/ssl/kernex/privkey.pem", str(key))
    (tmp_path / "kernex.conf").write_text(config)
    temp = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\n"
        f"events {{}}\nhttp {{\n    access_log off;\n{temp}"
        f"    include {tmp_path / 'kernex.conf'};\n}}\n"
    )
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr
