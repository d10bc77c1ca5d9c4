#!/usr/bin/env python3
"""Extracts the handwritten digits data set from scikit-learn's pinned PyPI wheel (scripts/data-requirements.txt).

  .venv/bin/python scripts/fetch_digits.py .venv/share/fusednorm/digits.csv

The wheel is fetched by pip (`pip download --no-deps`, PyPI only), the file sklearn/datasets/data/digits.csv.gz is
read out of it, decompressed (the C++ example then needs no zlib), checked against its SHA-256 and written to the
path given: 1797 rows of 64 pixel values (0..16) and the digit (0..9). scripts/bootstrap.sh runs it when the file
is missing. The data: UCI "Optical Recognition of Handwritten Digits" (CC BY 4.0), as scikit-learn ships it.
"""
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

MEMBER = "sklearn/datasets/data/digits.csv.gz"
# The decompressed CSV of scikit-learn 1.9.1 (the file has not changed in scikit-learn for years).
SHA256 = "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"


def pinned_requirement(root):
    with open(os.path.join(root, "scripts", "data-requirements.txt")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    (requirement,) = [line for line in lines if line.startswith("scikit-learn==")]
    return requirement


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: fetch_digits.py <output digits.csv>")
    out = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    requirement = pinned_requirement(root)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, requirement], check=True)
        (wheel,) = [os.path.join(tmp, name) for name in os.listdir(tmp) if name.endswith(".whl")]
        with zipfile.ZipFile(wheel) as archive:
            data = gzip.decompress(archive.read(MEMBER))
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"fetch_digits: {MEMBER} from {requirement} has SHA-256 {digest}, expected {SHA256}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "wb") as f:
        f.write(data)
    os.replace(out + ".tmp", out)
    rows = data.count(b"\n")
    print(f"fetch_digits: wrote {out} ({rows} rows) from {requirement}")


if __name__ == "__main__":
    main()
