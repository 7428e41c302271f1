"""studies/: the parts of the research studies that keep their records honest."""

import json

import pytest

from studies import biwi_proxy


def proxy_record(format_version, columns):
    return {"seeds": [0, 1], "vertices": 1000, "epochs": 12, "format_version": format_version,
            "test-a, head pose with": columns}  # fmt: skip


def test_a_proxy_study_of_one_config_replaces_its_columns_and_keeps_the_others(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps(proxy_record(5, {"SDETalk, biwi": 1.0, "SDETalk, biwi_paper": 2.0})))
    merged = biwi_proxy.merged_record(str(path), proxy_record(5, {"SDETalk, biwi": 3.0}))
    assert merged["test-a, head pose with"] == {"SDETalk, biwi": 3.0, "SDETalk, biwi_paper": 2.0}


@pytest.mark.parametrize("earlier_format", [4, None])
def test_a_proxy_study_is_not_merged_into_a_record_of_another_corpus_format(
    tmp_path, earlier_format
):
    path = tmp_path / "record.json"
    earlier = proxy_record(earlier_format, {"SDETalk, biwi_paper": 2.0})
    if earlier_format is None:
        del earlier["format_version"]  # a record written before the format was kept
    path.write_text(json.dumps(earlier))
    with pytest.raises(SystemExit, match="format_version"):
        biwi_proxy.merged_record(str(path), proxy_record(5, {"SDETalk, biwi": 3.0}))
