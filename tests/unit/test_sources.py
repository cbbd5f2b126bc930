"""Source adapters on small fixtures written in each publisher's format."""

import pytest

from orchestration.sources.base import SourceFormatError
from orchestration.sources.detect import detect_source
from tests.conftest import ML100K

U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Misérables, Les (1995)|01-Jan-1995||http://y|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0\n"
    "3|Nowhere (1997)|||http://z|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_DATA = "196\t1\t3\t881250949\n186\t2\t5\t891717742\n22\t3\t1\t878887116\n"


@pytest.fixture
def ml100k_dir(tmp_path):
    (tmp_path / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    (tmp_path / "u.data").write_text(U_DATA)
    return tmp_path


def test_movielens_100k_fixture_exact_values(ml100k_dir):
    source = detect_source(ml100k_dir)
    assert source.name == "movielens-100k"
    assert source.rating_range == (1.0, 5.0)
    events = source.events()
    assert events.to_dict("records")[1] == {
        "user_id": "186", "item_id": "2", "event_type": "rating", "timestamp": "891717742",
        "rating": "5", "source_file": "u.data", "source_row": 2, "parse_error": None,
    }
    items = source.items().set_index("item_id")
    assert items.loc["2", "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items.loc["1", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["2", "genres"] == "Drama|Musical"
    assert items.loc["3", "genres"] == "unknown"
    assert items.loc["3", "description"] == "Released on an unknown date"


def test_canonical_csv(tmp_path):
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,event_type,timestamp,rating\n"
        "7,a1,view,1600000000,\n"
        "8,a2,rating,2020-09-13T12:26:40Z,4.5\n")
    (tmp_path / "items.csv").write_text(
        "item_id,title,genres,description\na1,First,Drama|War,Long\na2,Second,,\n")
    source = detect_source(tmp_path)
    assert source.name == "canonical"
    rows = source.events().to_dict("records")
    assert rows[0]["rating"] is None or rows[0]["rating"] != rows[0]["rating"]  # empty
    assert rows[1]["timestamp"] == "2020-09-13T12:26:40Z" and rows[1]["rating"] == "4.5"
    items = source.items().to_dict("records")
    assert items == [
        {"item_id": "a1", "title": "First", "genres": "Drama|War", "description": "Long"},
        {"item_id": "a2", "title": "Second", "genres": "", "description": ""},
    ]


def test_unknown_directory_names_every_expected_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceFormatError) as error:
        detect_source(tmp_path)
    message = str(error.value)
    assert "u.data" in message and "events.csv" in message and "notes.txt" in message


def test_missing_item_file_is_a_clear_error(ml100k_dir):
    (ml100k_dir / "u.item").unlink()
    with pytest.raises(SourceFormatError, match="u.item"):
        detect_source(ml100k_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(SourceFormatError, match="not a directory"):
        detect_source(tmp_path / "nope")


@pytest.mark.skipif(not (ML100K / "u.data").exists(),
                    reason=f"MovieLens-100K not present at {ML100K}")
def test_real_movielens_100k():
    source = detect_source(ML100K)
    events, items = source.events(), source.items()
    assert len(events) == 100_000
    assert events["user_id"].nunique() == 943
    assert len(items) == 1682
    assert items.set_index("item_id").loc["1", "title"] == "Toy Story (1995)"
    assert set(events["rating"]) == {"1", "2", "3", "4", "5"}


def test_movielens_1m_fixture_exact_values(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n2::3408::4::978298413\n")
    (tmp_path / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "3408::Erin Brockovich (2000)::Drama|Romance\n"
        "3::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n".encode("latin-1"))
    source = detect_source(tmp_path)
    assert (source.name, source.rating_range) == ("movielens-1m", (1.0, 5.0))
    first = source.events().to_dict("records")[0]
    assert first == {"user_id": "1", "item_id": "1193", "event_type": "rating",
                     "timestamp": "978300760", "rating": "5", "source_file": "ratings.dat",
                     "source_row": 1, "parse_error": None}
    items = source.items().set_index("item_id")
    assert items.loc["3", "title"] == "Cité des enfants perdus, La (1995)"
    assert items.loc["3408", "genres"] == "Drama|Romance"


def test_movielens_latest_fixture_with_tags(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n'
        '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n4,Unknown (2000),(no genres listed)\n',
        encoding="utf-8")
    (tmp_path / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n2,1,pixar,1\n3,1,fun,2\n4,1,pixar,3\n")
    source = detect_source(tmp_path)
    assert (source.name, source.rating_range) == ("movielens-latest", (0.5, 5.0))
    events = source.events()
    assert events[["user_id", "item_id", "rating", "timestamp"]].values.tolist() == [
        ["1", "1", "4.0", "964982703"], ["1", "3", "3.5", "964981247"]]
    items = source.items().set_index("item_id")
    assert items.loc["3", "title"] == "Grumpier Old Men, The (1995)"
    assert items.loc["1", "description"] == "pixar, fun"
    assert items.loc["4", "genres"] == ""
    assert items.loc["3", "description"] == ""


def test_bad_lines_are_kept_as_rows_with_a_parse_error(tmp_path):
    """Nothing is dropped at read time: wrong field counts, empty lines, stray
    latin-1 bytes in a UTF-8 file, and a 1 MB line all come through as rows."""
    huge = "x" * 1_000_000
    (tmp_path / "events.csv").write_bytes(
        b"user_id,item_id,event_type,timestamp,rating\n"
        b"u1,a1,view,1600000000,\n"
        b"u1,a1,view,1600000001,,extra,fields\n"
        b"\n"
        b"u\xe9,a1,view,1600000002,\n"
        + f"u2,{huge},view,1600000003,\n".encode()
        + b'"u3","a1","click","2020-09-13T12:26:40Z",""\n')
    (tmp_path / "items.csv").write_text("item_id,title\na1,First\n")
    rows = detect_source(tmp_path).events().to_dict("records")
    assert len(rows) == 6
    assert rows[0]["parse_error"] is None and rows[0]["rating"] is None
    assert rows[1]["parse_error"] == "line has 7 fields, expected 5"
    assert rows[1]["timestamp"] == "1600000001"
    assert rows[2]["parse_error"] == "line has 0 fields, expected 5"
    assert rows[3]["user_id"] == "u\ufffd" and rows[3]["parse_error"] is None
    assert len(rows[4]["item_id"]) == 1_000_000
    assert rows[5]["user_id"] == "u3" and rows[5]["timestamp"] == "2020-09-13T12:26:40Z"
    assert [r["source_row"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_header_only_and_empty_files(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\na1,First\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,event_type,timestamp\n")
    assert detect_source(tmp_path).events().empty
    (tmp_path / "events.csv").write_text("")
    with pytest.raises(SourceFormatError, match="empty"):
        detect_source(tmp_path).events()


def test_movielens_100k_malformed_line(ml100k_dir):
    (ml100k_dir / "u.data").write_text(U_DATA + "5\t1\n")
    rows = detect_source(ml100k_dir).events().to_dict("records")
    assert rows[-1]["parse_error"] == "line has 2 fields, expected 4"
    assert rows[-1]["user_id"] == "5" and rows[-1]["timestamp"] is None


@pytest.mark.parametrize("name, header, delimiter, lines", [
    ("events.csv", b"user_id,item_id,event_type,timestamp,rating\n",
     b",", [b"u1,a1,view,1600000000,", b"u1,a1,view,16,,extra", b"", b"\r", b"u\xe9,a1,c,1,2",
            b'"u3","a,1","click","2020-09-13T12:26:40Z",""', b",,,,", b"u4,a2,view,17,4\r"]),
    ("u.data", b"", b"\t", [b"196\t1\t3\t881250949", b"5\t1", b"", b"7\t\t\t", b'"8"\t1\t3\t9',
                           b"9\t2\t5\t891717742\r"]),
])
def test_blocks_of_plain_lines_are_cut_as_their_lines_are(tmp_path, monkeypatch, name, header,
                                                          delimiter, lines):
    """The reader's Arrow path over whole blocks gives every row the per-line
    ``split`` gives it (quotes, empty fields, short and long lines, a stray
    carriage return), across block and chunk boundaries."""
    from dataclasses import replace

    import numpy as np

    from orchestration.sources import base

    (tmp_path / "items.csv").write_text("item_id,title\na1,First\n")
    if name == "u.data":
        (tmp_path / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    rng = np.random.default_rng(0)
    body = [lines[i] for i in rng.integers(0, len(lines), 400)]
    (tmp_path / name).write_bytes(header + b"\n".join(body) + b"\n")
    source = detect_source(tmp_path)
    path = source.event_files[0]
    fmt = source.line_format(path)
    assert fmt.delimiter == delimiter.decode()
    monkeypatch.setattr(base, "BLOCK_BYTES", 97)
    blocks = list(base.read_line_chunks(path, fmt, chunk_rows=64))
    lines_only = list(base.read_line_chunks(path, replace(fmt, delimiter=None), chunk_rows=64))
    assert [len(c) for c in blocks] == [64] * 6 + [16]
    got = [r for c in blocks for r in c.to_dict("records")]
    assert got == [r for c in lines_only for r in c.to_dict("records")]
    assert [r["source_row"] for r in got] == list(range(1, 401))
    first = body.index(lines[0])
    want = (["u1", "a1", "view", "1600000000", None] if name == "events.csv"
            else ["196", "1", "3", "881250949"])
    assert [got[first][c] for c in fmt.columns] == want
    assert got[body.index(b"")]["parse_error"] == f"line has 0 fields, expected {len(want)}"
