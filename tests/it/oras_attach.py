"""Attaches one file to an image as an OCI 1.1 referrer with oras-py, the way `oras attach`
does: a manifest whose `subject` is the image, pushed through the gate. Run by
tests/it/referrers.rs with the gate's CA in REQUESTS_CA_BUNDLE. Prints the response's
OCI-Subject header (empty when there is none).

usage: oras_attach.py HOST USER PASSWORD REPOSITORY TAG SUBJECT_DIGEST SUBJECT_SIZE FILE CONFIG_MEDIA_TYPE
"""
import os
import sys
import tempfile

import oras.client
import oras.oci

host, user, password, repository, tag, digest, size, path, config_type = sys.argv[1:10]
client = oras.client.OrasClient(hostname=host, tls_verify=True, auth_backend="basic")
client.auth.set_basic_auth(user, password)
subject = oras.oci.Subject(
    mediaType="application/vnd.oci.image.manifest.v1+json", digest=digest, size=int(size)
)
config = os.path.join(tempfile.mkdtemp(), "config.json")
with open(config, "w") as f:
    f.write("{}")
response = client.push(
    target=f"{host}/{repository}:{tag}",
    files=[path],
    subject=subject,
    manifest_config=f"{config}:{config_type}",
    disable_path_validation=True,
    quiet=True,
)
print(response.status_code, response.headers.get("OCI-Subject", ""))
