"""Job files (`_jobs`): JSONL, CSV and text jobs read lazily into requests with stable ids, and
their bad lines reported.
"""

import pytest

from gemimg_async import BadLine, ImageRequest, JobDefaults, ValidationError, content_id, read_jobs
from helpers import TIER_2K, TIER_4K, jsonl, write_jobs


def collect(path, **kwargs) -> tuple[list[ImageRequest], list[BadLine]]:
    bad: list[BadLine] = []
    return list(read_jobs(path, on_bad_line=bad.append, **kwargs)), bad


def test_jsonl_jobs_take_every_field_and_the_defaults(tmp_path):
    """A .jsonl job gets its own fields, the defaults for the rest, and `image` as `images`."""
    path = write_jobs(
        tmp_path,
        "jobs.jsonl",
        [
            *jsonl(
                {
                    "prompt": "a lighthouse",
                    "id": "light",
                    "model": "2k",
                    "size": "16:9",
                    "n": 2,
                    "response_format": "b64_json",
                },
                {"prompt": "a fox"},
            ),
            "",
            *jsonl({"prompt": "a cat", "image": "https://example.com/cat.png", "size": None}),
        ],
    )
    jobs, bad = collect(path, defaults=JobDefaults(model="4k", size="1:1"))
    assert bad == []
    light, fox, cat = jobs
    assert (light.id, light.model, light.size, light.n, light.response_format) == (
        "light",
        TIER_2K,
        "16:9",
        2,
        "b64_json",
    )
    assert (fox.model, fox.size, fox.n, fox.response_format) == (TIER_4K, "1:1", 1, "url")
    assert cat.images == ("https://example.com/cat.png",)
    assert cat.size == "1:1"  # null counts as left out


def test_csv_jobs_read_their_header_and_both_image_spellings(tmp_path):
    """A .csv job file: header names, empty cells as defaults, images as JSON or `|`-separated."""
    path = tmp_path / "jobs.csv"
    path.write_text(
        "\ufeffPrompt,id,size,n,images\n"
        'a fox,fox,16:9,2,"[""https://e.com/a.png"", ""https://e.com/b.png""]"\n'
        "a cat,,,,https://e.com/c.png | https://e.com/d.png\n"
        '"a poem\nover two lines",poem,,,\n'
        "a dog,dog,,,\n",
        encoding="utf-8",
    )
    jobs, bad = collect(path)
    assert bad == []
    fox, cat, poem, dog = jobs
    assert (fox.id, fox.size, fox.n) == ("fox", "16:9", 2)
    assert fox.images == ("https://e.com/a.png", "https://e.com/b.png")
    assert cat.images == ("https://e.com/c.png", "https://e.com/d.png")
    assert cat.id == content_id(cat.__class__("a cat", images=cat.images))
    assert poem.prompt == "a poem\nover two lines"
    assert dog.id == "dog"


def test_txt_jobs_are_one_prompt_per_line(tmp_path):
    """A .txt job file holds one prompt per line; blank lines are skipped."""
    path = write_jobs(tmp_path, "jobs.txt", "a fox\n\n  a cat in the rain  \r\n一只狐狸\n")
    jobs, bad = collect(path, defaults=JobDefaults(size="3:4"))
    assert bad == []
    assert [job.prompt for job in jobs] == ["a fox", "a cat in the rain", "一只狐狸"]
    assert all(job.size == "3:4" and job.id for job in jobs)


def test_bad_jsonl_lines_are_reported_with_their_number_and_skipped(tmp_path):
    """Every kind of bad line is reported with its line number; the good lines still come."""
    path = write_jobs(
        tmp_path,
        "jobs.jsonl",
        [
            '{"prompt": "good one", "id": "a"}',
            '{"prompt": "torn',
            "[1, 2]",
            '{"prompt": ""}',
            '{"prompt": "x", "promt": "typo"}',
            '{"prompt": "x", "id": "../escape"}',
            '{"prompt": "x", "n": 0}',
            '{"prompt": "x", "size": "7:3"}',
            '{"prompt": "again", "id": "a"}',
            '{"prompt": "good two"}',
        ],
    )
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["good one", "good two"]
    assert [line.line for line in bad] == [2, 3, 4, 5, 6, 7, 8, 9]
    reasons = [line.reason for line in bad]
    assert reasons[0].startswith("not valid JSON")
    assert "JSON object" in reasons[1]
    assert "prompt" in reasons[2]
    assert "promt" in reasons[3]
    assert "id must be" in reasons[4]
    assert "n must be" in reasons[5]
    assert "7:3" in reasons[6]
    assert reasons[7] == "duplicate id 'a' (first on line 1)"
    assert str(bad[0]).startswith("jobs.jsonl:2: not valid JSON")


def test_bad_csv_rows_and_bytes_that_are_not_utf8_are_bad_lines(tmp_path):
    """A CSV row with a bad count, too many cells, or bytes that are not UTF-8 is one bad line."""
    path = tmp_path / "jobs.csv"
    path.write_bytes(b"prompt,n\na fox,two\na cat,1,extra\ncaf\xe9 au lait,1\na dog,3\n")
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["a dog"]
    assert [(line.line, line.reason) for line in bad] == [
        (2, "n must be a whole number, not 'two'"),
        (3, "3 cells, but the header names 2 columns"),
        (4, "not valid UTF-8"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("jobs.json", '{"prompt": "x"}', "ends in"),
        ("missing.jsonl", None, "no such job file"),
        ("jobs.csv", "prompt,colour\nx,red\n", "unknown column(s) 'colour'"),
        ("jobs.csv", "id,size\nx,1:1\n", "no prompt"),
    ],
)
def test_a_file_that_is_no_job_file_is_a_usage_error(tmp_path, name, content, message):
    """A wrong suffix, a missing file or a bad CSV header raise ValidationError at once."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jobs(path)


def test_bad_defaults_are_a_usage_error():
    """Defaults are checked like any job, before anything is read."""
    with pytest.raises(ValidationError):
        JobDefaults(size="7:3")


def test_derived_ids_are_stable_and_repeats_get_suffixes(tmp_path):
    """Jobs without an id get the same id on every read; repeats get -2, -3 in file order."""
    path = write_jobs(
        tmp_path,
        "jobs.jsonl",
        jsonl({"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, {"prompt": "a"}),
    )
    first, _ = collect(path)
    again, _ = collect(path)
    base = content_id(ImageRequest("a"))
    assert [job.id for job in first] == [
        base,
        content_id(ImageRequest("b")),
        f"{base}-2",
        f"{base}-3",
    ]
    assert [job.id for job in again] == [job.id for job in first]
    other_model, _ = collect(path, defaults=JobDefaults(model="2k"))
    assert other_model[0].id != base  # the id is of the request as resolved with its defaults


def test_local_input_images_are_found_beside_the_job_file(tmp_path):
    """A relative input image path is read from the job file's folder; the id is of the path as
    written, so moving the folder keeps the ids."""
    folder = tmp_path / "batch"
    folder.mkdir()
    path = write_jobs(folder, "jobs.jsonl", jsonl({"prompt": "paint it", "images": ["cat.png"]}))
    (job,), _ = collect(path)
    assert job.images == (str(folder / "cat.png"),)
    assert job.id == content_id(ImageRequest("paint it", images=["cat.png"]))


def test_job_files_are_read_lazily(tmp_path):
    """The first job comes before the rest of the file is read."""
    path = write_jobs(tmp_path, "jobs.jsonl", ['{"prompt": "first"}', *["{}"] * 5000, "not json"])
    bad: list[BadLine] = []
    jobs = read_jobs(path, on_bad_line=bad.append)
    assert next(jobs).prompt == "first"
    assert bad == []
    jobs.close()
