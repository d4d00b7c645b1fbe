"""Job files (`_jobs`): JSONL, CSV and text jobs read lazily into requests with stable ids, and
their bad lines reported.
"""

import io
import sys

import attrs
import pytest

from gemimg_async import BadLine, ImageRequest, JobDefaults, ValidationError, content_id, read_jobs
from gemimg_async._jobs import fingerprint
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


def test_bad_csv_rows_are_bad_lines(tmp_path):
    """A CSV row with a bad count or too many cells is one bad line."""
    path = tmp_path / "jobs.csv"
    path.write_bytes(b"prompt,n\na fox,two\na cat,1,extra\na dog,3\n")
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["a dog"]
    assert [(line.line, line.reason) for line in bad] == [
        (2, "n must be a whole number, not 'two'"),
        (3, "3 cells, but the header names 2 columns"),
    ]


@pytest.mark.parametrize(
    ("content", "guess", "line"),
    [
        ("一只狐狸\n水彩风格的橘猫\n".encode("gbk"), "gbk", 1),
        (b"prompt,n\na fox,1\ncaf\xe9 au lait,1\n", "cp1252", 3),
    ],
    ids=["gbk", "latin"],
)
def test_a_file_not_in_utf8_is_refused_once_with_a_guess(tmp_path, content, guess, line):
    """A job file that does not decode is a ValidationError before any job is read, naming the
    first bad line and the encoding it looks like."""
    path = tmp_path / ("jobs.csv" if b"prompt," in content else "jobs.txt")
    path.write_bytes(content)
    with pytest.raises(ValidationError) as caught:
        read_jobs(path)
    message = str(caught.value)
    assert "is not UTF-8" in message
    assert f"(line {line}:" in message
    assert message.endswith(f"try --encoding {guess}")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_byte_order_mark_says_the_encoding(tmp_path, encoding):
    """A file that starts with a UTF-8, UTF-16 or UTF-32 byte-order mark is read in that
    encoding, whatever `encoding` says."""
    path = tmp_path / "jobs.txt"
    path.write_bytes("一只狐狸\na fox\n".encode(encoding))
    jobs, bad = collect(path, encoding="gbk")
    assert [job.prompt for job in jobs] == ["一只狐狸", "a fox"]
    assert bad == []


def test_encoding_reads_a_file_in_another_encoding(tmp_path):
    """`encoding=` reads a file without a byte-order mark; an unknown one is a usage error."""
    path = tmp_path / "jobs.jsonl"
    path.write_bytes('{"prompt": "水彩风格的橘猫"}\n'.encode("gbk"))
    jobs, _ = collect(path, encoding="gbk")
    assert [job.prompt for job in jobs] == ["水彩风格的橘猫"]
    with pytest.raises(ValidationError, match="unknown encoding 'klingon'"):
        read_jobs(path, encoding="klingon")


def test_txt_lines_starting_with_hash_are_comments(tmp_path):
    """In a .txt file a line starting with # (after blanks) is a comment; in .jsonl a prompt may
    start with one."""
    path = write_jobs(tmp_path, "jobs.txt", "# posters\na fox\n  # more\n")
    jobs, _ = collect(path)
    assert [job.prompt for job in jobs] == ["a fox"]
    path = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "#1 a fox"}))
    jobs, _ = collect(path)
    assert [job.prompt for job in jobs] == ["#1 a fox"]


@pytest.mark.parametrize(
    ("name", "content"),
    [("jobs.txt", ""), ("jobs.txt", "\n# only a comment\n"), ("jobs.csv", "prompt,id\n")],
)
def test_a_file_with_no_job_is_a_usage_error(tmp_path, name, content):
    """A job file that holds no job (empty, blank, comments or a CSV header only) is refused."""
    path = write_jobs(tmp_path, name, content)
    with pytest.raises(ValidationError, match="holds no job"):
        read_jobs(path)


@pytest.mark.parametrize(
    ("text", "prompts"),
    [
        ("# jobs\na fox\na cat\n", ["a fox", "a cat"]),
        ('\n{"prompt": "a fox", "id": "fox"}\n', ["a fox"]),
    ],
    ids=["text", "jsonl"],
)
def test_dash_reads_stdin(monkeypatch, text, prompts):
    """`-` reads the jobs from stdin: JSONL when its first line is an object, else one prompt a
    line."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    jobs, bad = collect("-")
    assert [job.prompt for job in jobs] == prompts
    assert bad == []


def test_the_fingerprint_is_of_what_is_asked():
    """A job's fingerprint changes with its prompt, model, size, n, input images and extra_body,
    not with how the image travels back or its id."""
    base = ImageRequest("a fox", id="fox")
    same = [attrs.evolve(base, response_format="b64_json"), attrs.evolve(base, id="other")]
    changed = [
        attrs.evolve(base, prompt="a cat"),
        attrs.evolve(base, model="2k"),
        attrs.evolve(base, size="16:9"),
        attrs.evolve(base, n=2),
        attrs.evolve(base, images=["https://e.com/a.png"]),
        attrs.evolve(base, extra_body={"seed": 1}),
    ]
    assert {fingerprint(request) for request in same} == {fingerprint(base)}
    assert len({fingerprint(request) for request in [base, *changed]}) == 7


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
