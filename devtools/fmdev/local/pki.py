"""The local cluster's certificates: one CA, and a certificate per component, made with openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ensure_ca(pki: Path, cn: str = "fm-operator-local-ca", service_account_key: bool = True) -> None:
    """<pki>/ca.crt and ca.key (and the API server's service-account signing key, sa.key, unless told not to)."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-subj", f"/CN={cn}", "-days", "3650", cwd=pki)
    if service_account_key and not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def issue(pki: Path, name: str, cn: str, org: str | None = None, ips: tuple[str, ...] = (),
          dns: tuple[str, ...] = (), client: bool = False) -> tuple[Path, Path]:
    """<name>.crt/.key signed by the CA: a server certificate with the given SANs, or a client one."""
    crt, key = pki / f"{name}.crt", pki / f"{name}.key"
    sans = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns])
    stamp = pki / f"{name}.subject"
    want = f"{cn}|{org}|{sans}|{client}"
    if crt.exists() and stamp.exists() and stamp.read_text() == want:
        return crt, key
    subj = f"/CN={cn}" + (f"/O={org}" if org else "")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", f"{name}.csr", "-subj", subj, cwd=pki)
    ext = ["extendedKeyUsage=clientAuth" if client else "extendedKeyUsage=serverAuth"]
    if sans:
        ext.append(f"subjectAltName={sans}")
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", crt.name, "-days", "3650", "-extfile", f"{name}.ext", cwd=pki)
    stamp.write_text(want)
    return crt, key
