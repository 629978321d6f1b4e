"""Tokens and keys for tests/security.rs, made with PyJWT and cryptography (not our code).

    pyjwt.py keys DIR                  RSA, EC P-256 and Ed25519 key pairs: DIR/{rsa,ec,ed}.{key,pub}
    pyjwt.py sign ALG KEYFILE CLAIMS   a token of the JSON CLAIMS, signed with ALG
    pyjwt.py decode SECRETFILE TOKEN   the claims of an HS256 TOKEN, verified (JSON)
"""
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def write_pair(directory, name, private):
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(os.path.join(directory, name + ".key"), "wb") as f:
        f.write(pem)
    with open(os.path.join(directory, name + ".pub"), "wb") as f:
        f.write(pub)


def secret(path):
    with open(path, "rb") as f:
        return f.read().rstrip(b"\n")


cmd = sys.argv[1]
if cmd == "keys":
    d = sys.argv[2]
    write_pair(d, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    write_pair(d, "ec", ec.generate_private_key(ec.SECP256R1()))
    write_pair(d, "ed", ed25519.Ed25519PrivateKey.generate())
elif cmd == "sign":
    alg, keyfile, claims = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    # (alg "none": an unsigned token, which no node may accept)
    key = None if alg == "none" else secret(keyfile)
    print(jwt.encode(claims, key, algorithm=alg))
elif cmd == "decode":
    claims = jwt.decode(
        sys.argv[3], secret(sys.argv[2]), algorithms=["HS256"], options={"verify_aud": False}
    )
    print(json.dumps(claims))
else:
    sys.exit(f"unknown command {cmd}")
