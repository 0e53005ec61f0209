"""The VOC samples as the API server sees them: the data sample (PVCs + Job) and the three-stage recipe are
accepted by a server-side dry run in one namespace, so their schemas, not only their YAML, are right."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("sample", ["voc-data.yaml", "voc-three-stage.yaml"])
def test_the_voc_samples_pass_a_server_side_dry_run(kubectl, repo_root, namespace, sample):
    path = repo_root / "manifests" / "samples" / sample
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout and result.stderr == "", (result.stdout, result.stderr)
