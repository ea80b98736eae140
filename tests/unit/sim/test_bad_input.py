"""Bad input to ``python -m strata_sim`` (issue 21, "Bad input"): a trace with missing or malformed columns names the
file, the row (its line in the decompressed file, the header being line 1) and the column; a bad fleet names the
file and the pool's field; a bad flag names the flag; each is one line on stderr and exit status 2, never a
traceback, a silent wrong result or a replay that does not end. Every trace and fleet is generated here."""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata_sim.__main__ import main
from strata_sim.model import SimInputError, load_fleet
from strata_sim.traces import read_alibaba, read_helios

pytestmark = pytest.mark.timeout(30)

DAY = 86400 * 115
"""The Alibaba replay window's start (day 115), in the trace's seconds."""
ALIBABA_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
)
GOOD_POD = f"p0,1000,1,1,1000,,LS,Running,{DAY},{DAY + 3600},{DAY}"
HELIOS_HEADER = "time,running_gpu_num,pending_gpu_num"


def a_pod(
    name: str = "p1", gpus: str = "1", qos: str = "BE", times: tuple[object, object, object] | None = None
) -> str:
    created, deleted, scheduled = times or (DAY + 60, DAY + 7260, DAY + 60)
    return f"{name},1000,1,{gpus},1000,,{qos},Running,{created},{deleted},{scheduled}"


def alibaba_trace(tmp_path: Path, *rows: str, header: str = ALIBABA_HEADER, raw: bytes | None = None) -> Path:
    """A folder as ``--traces`` names it, holding an Alibaba pod list of ``rows`` (or ``raw`` gzip bytes)."""
    folder = tmp_path / "alibaba_gpu_v2023"
    folder.mkdir(parents=True)
    text = "\n".join([header, *rows]) + "\n"
    (folder / "openb_pod_list_default.dev.csv.gz").write_bytes(raw if raw is not None else gzip.compress(text.encode()))
    return tmp_path


def helios_trace(tmp_path: Path, *rows: str) -> Path:
    folder = tmp_path / "helios_earth_vc_demand"
    folder.mkdir()
    with gzip.open(folder / "vcA_cluster_sequence_vc.dev.csv.gz", "wt") as handle:
        handle.write("\n".join([HELIOS_HEADER, *rows]) + "\n")
    return tmp_path


def a_fleet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m strata_sim`` (argparse's errors exit, the rest return)."""
    try:
        code = main([*argv, "--no-progress"])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a refused run writes to stderr, after checking it is the only one, with status 2 and no table."""
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert "policy " not in out  # no replay ran
    return err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([a_pod(gpus="0.5")], r"row 3, column num_gpu: expected a whole number of zero or more, got '0.5'"),
        ([a_pod(gpus="1.5")], r"row 3, column num_gpu: expected a whole number"),
        ([a_pod(times=(DAY + 60, DAY, DAY + 60))], r"row 3, column deletion_time: \d+ is before scheduled_time"),
        ([a_pod(times=(DAY + 60, DAY + 7200, DAY))], r"row 3, column scheduled_time: \d+ is before creation_time"),
        ([a_pod(times=(DAY, "1e15", DAY))], r"row 3, column deletion_time: 1e15 is more than 3,650 days after"),
        ([a_pod(name="p0")], r"row 3, column name: 'p0' is also the name of row 2"),
        ([a_pod(qos="ls")], r"row 3, column qos: expected one of BE, Burstable, Guaranteed, LS, got 'ls'"),
        ([a_pod() + ",extra"], r"row 3: 12 cells, the header has 11$"),
        (["p1,1000,1,1,1000,,LS"], r"row 3: 7 cells, the header has 11; no column pod_phase"),
        (["", a_pod(gpus="two")], r"row 4, column num_gpu"),  # a blank line is a line of the file
        ([a_pod(name='"' + "x" * 200_000 + '"')], r"row 3: field larger than field limit"),
    ],
)
def test_a_malformed_alibaba_row_names_the_file_row_and_column(tmp_path: Path, rows: list[str], message: str) -> None:
    traces = alibaba_trace(tmp_path, GOOD_POD, *rows)
    with pytest.raises(SimInputError, match=r"openb_pod_list_default\.dev\.csv\.gz: " + message):
        read_alibaba(traces / "alibaba_gpu_v2023", days=1)


def test_bytes_that_are_not_utf8_name_their_row_and_column_and_a_byte_order_mark_is_no_column(tmp_path: Path) -> None:
    text = f"{ALIBABA_HEADER}\n{GOOD_POD}\n".encode()
    bad = alibaba_trace(tmp_path / "bad", raw=gzip.compress(text + a_pod(qos="L\xffS").encode("latin-1") + b"\n"))
    with pytest.raises(SimInputError, match=r"row 3, column qos: not UTF-8 text"):
        read_alibaba(bad / "alibaba_gpu_v2023", days=1)
    marked = alibaba_trace(tmp_path / "bom", raw=gzip.compress(b"\xef\xbb\xbf" + text))
    jobs, _ = read_alibaba(marked / "alibaba_gpu_v2023", days=1)
    assert [j.key for j in jobs] == ["p0"]


def test_an_empty_truncated_or_corrupt_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    empty = alibaba_trace(tmp_path / "empty", raw=gzip.compress(b""))
    with pytest.raises(SimInputError, match=r"\.csv\.gz: empty; expected a header row with the columns name, num_gpu"):
        read_alibaba(empty / "alibaba_gpu_v2023", days=1)
    whole = gzip.compress("\n".join([ALIBABA_HEADER, *(a_pod(f"p{i}") for i in range(2000))]).encode())
    cut = alibaba_trace(tmp_path / "cut", raw=whole[: len(whole) // 2])
    with pytest.raises(SimInputError, match=r"cannot read the trace .*\.csv\.gz after row \d+: Compressed file ended"):
        read_alibaba(cut / "alibaba_gpu_v2023", days=1)
    corrupt = bytearray(gzip.compress(f"{ALIBABA_HEADER}\n{GOOD_POD}\n".encode()))
    corrupt[10] = 0xFF  # the first deflate block's type: 3, which does not exist (zlib.error, not an OSError)
    broken = alibaba_trace(tmp_path / "corrupt", raw=bytes(corrupt))
    with pytest.raises(SimInputError, match=r"cannot read the trace .*invalid block type"):
        read_alibaba(broken / "alibaba_gpu_v2023", days=1)


def test_a_missing_or_repeated_column_names_the_file_and_what_its_header_has(tmp_path: Path) -> None:
    traces = alibaba_trace(tmp_path, header=ALIBABA_HEADER.replace("num_gpu", "gpus"))
    with pytest.raises(SimInputError, match=r"missing column\(s\) num_gpu \(the header, row 1, has name, cpu_milli"):
        read_alibaba(traces / "alibaba_gpu_v2023", days=1)
    (tmp_path / "twice").mkdir()
    twice = alibaba_trace(tmp_path / "twice", GOOD_POD + ",1", header=ALIBABA_HEADER + ",num_gpu")
    with pytest.raises(SimInputError, match=r"\.csv\.gz: row 1: column\(s\) num_gpu more than once in the header"):
        read_alibaba(twice / "alibaba_gpu_v2023", days=1)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["2020-05-01 00:00:00,1.5,0"], r"row 2, column running_gpu_num: expected a whole number"),
        (["2020-05-01 00:10:00,8,0", "2020-05-01 00:05:00,0,0"], r"row 3, column time: .* is before the previous row"),
        (["yesterday,1,0"], r"row 2, column time: expected a date and time \(2020-05-01 00:00:00\), got 'yesterday'"),
        (["2020-05-01 00:00:00"], r"row 2: 1 cells, the header has 3; no column running_gpu_num"),
    ],
)
def test_a_malformed_helios_row_names_the_file_row_and_column(tmp_path: Path, rows: list[str], message: str) -> None:
    traces = helios_trace(tmp_path, *rows)
    with pytest.raises(SimInputError, match=r"vcA_cluster_sequence_vc\.dev\.csv\.gz: " + message):
        read_helios(traces / "helios_earth_vc_demand", days=1)


def test_helios_demand_too_large_for_a_float_is_a_job_not_an_overflow(tmp_path: Path) -> None:
    traces = helios_trace(tmp_path, "2020-05-01 00:00:00,1e308,1e308", "2020-05-01 00:01:00,0,0")
    (job,) = read_helios(traces / "helios_earth_vc_demand", days=1)[0]
    assert job.gpus >= 2 * int(1e308)


def test_a_folder_without_helios_files_is_an_error_not_an_empty_trace(tmp_path: Path) -> None:
    with pytest.raises(SimInputError, match=r"no \*_cluster_sequence_vc\.dev\.csv\.gz file"):
        read_helios(tmp_path / "helios_earth_vc_demand", days=1)


def test_helios_demand_ends_with_the_file_not_with_a_longer_window(tmp_path: Path) -> None:
    """Rows a minute apart for 5 minutes: a 30-day window replays those 5 minutes, not 30 days of the last row."""
    rows = [f"2020-05-01 00:0{m}:00,{d},0" for m, d in enumerate((0, 4, 12, 8, 8))]
    folder = helios_trace(tmp_path, *rows) / "helios_earth_vc_demand"
    assert read_helios(folder, days=30) == read_helios(folder, days=5 / 1440)
    assert max(j.arrival_s + j.work_h * 3600 for j in read_helios(folder, days=30)[0]) == 300.0


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is one with daylight saving time."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_helios_times_without_a_zone_are_utc_whatever_the_machines_zone(tmp_path: Path) -> None:
    """New York's clocks go back an hour at 2020-11-01 06:00 UTC (02:00 EDT): as local time, the minute from 01:59 to
    02:00 would last 61 minutes."""
    traces = helios_trace(tmp_path, "2020-11-01 01:59:00,8,0", "2020-11-01 02:00:00,0,0")
    (job,) = read_helios(traces / "helios_earth_vc_demand", days=1)[0]
    assert job.work_h == pytest.approx(1 / 60)


FLEET_POOL = "{name: a, gpu: H100, capacityType: reserved, nodes: 2}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "pools:\n  - {name: a, gpu: H100, capacityType: reserved, nodes: -2}\n",
            r"pools\[0\]\.nodes: expected a whole",
        ),
        ("pools:\n  - {name: a, gpu: H100, capacityType: reserved, nodes: 1.7}\n", r"pools\[0\]\.nodes: .* got 1\.7"),
        ("pools:\n  - {name: a, gpu: H100, capacityType: reserved, nodes: true}\n", r"pools\[0\]\.nodes: .* got True"),
        ("pools:\n  - {name: a, gpu: H100, capacityType: reserved}\n", r"pools\[0\]\.nodes: .* got None"),
        (f"pools:\n  - {FLEET_POOL}\n  - {FLEET_POOL}\n", r"pools\[1\]\.name: 'a' is also the name of pools\[0\]"),
        ("pools:\n  - {name: a, gpu: H100, capacityType: spot, nodes: 1, zone: [x]}\n", r"pools\[0\]\.zone: expected"),
        ("pools: []\n", r"no GPU nodes"),
        ("pools:\n  - {name: a, gpu: H100, capacityType: reserved, nodes: 0}\n", r"no GPU nodes"),
        ("pools:\n  - {name: c, gpu: none, capacityType: on-demand, nodes: 2}\n", r"no GPU nodes"),
        ("pools:\n  - {name: a, gpu: H100, capacityType: reserved, nodes: 1000000000000}\n", r"past 100,000 nodes"),
        ("pools: [ {name: a, gpu: H100\n", r"fleet\.yaml: line 2, column 1: not YAML: expected ',' or '}'"),
    ],
)
def test_a_bad_fleet_names_the_file_and_the_pools_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SimInputError, match=message) as raised:
        load_fleet(a_fleet(tmp_path, text))
    assert "\n" not in str(raised.value)


def test_a_fleet_file_that_is_not_utf8_and_a_scale_out_of_range_are_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(f"pools:\n  - {FLEET_POOL}\n".replace("name: a", "name: \xff").encode("latin-1"))
    with pytest.raises(SimInputError, match=r"cannot read the fleet file .*fleet\.yaml: 'utf-8' codec"):
        load_fleet(path)
    good = a_fleet(tmp_path, f"pools:\n  - {FLEET_POOL}\n")
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(SimInputError, match=r"--scale: expected a number more than 0"):
            load_fleet(good, scale)
    with pytest.raises(SimInputError, match=r"pools\[0\]\.nodes: 2 nodes x --scale 1e\+09 takes the fleet past"):
        load_fleet(good, 1e9)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--days", "0"], r"argument --days: expected a number more than 0 and at most 3650, got '0'"),
        (["--days", "nan"], r"argument --days: .* got 'nan'"),
        (["--days", "1e7"], r"argument --days: .* got '1e7'"),
        (["--scale", "0"], r"argument --scale: expected a number more than 0, got '0'"),
        (["--scale", "inf"], r"argument --scale: .* got 'inf'"),
        (["--seeds", "0"], r"argument --seeds: expected a whole number of one or more, got '0'"),
        (["--checkpoint-min", "inf"], r"argument --checkpoint-min: expected a number at least 0, got 'inf'"),
        (["--wait-bound-min", "-1"], r"argument --wait-bound-min: .* got '-1'"),
        (["--defragment-after-h", "nan"], r"argument --defragment-after-h: .* got 'nan'"),
        (["--long-job-h", "inf"], r"argument --long-job-h: .* got 'inf'"),
        (["--floor-slot-h", "0"], r"argument --floor-slot-h: expected a number more than 0"),
        (["--trace", "synthetic:abc"], r"--trace synthetic:abc: expected synthetic:<jobs>, 1 to 10,000,000 jobs"),
        (["--trace", "synthetic:0"], r"--trace synthetic:0: expected synthetic:<jobs>"),
        (["--policies", "default,"], r"--policies: unknown policy ''; known: default, "),
        (["--policies", "default,default"], r"--policies: default named more than once"),
        (["--aims-of", "stratta"], r"--aims-of: unknown policy 'stratta'"),
    ],
)
def test_a_flag_out_of_range_is_one_line_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    err = refused(capsys, "--trace", "synthetic:5", "--days", "1", "--policies", "default", *argv)
    assert re.match("error: " + message, err), err


def test_a_catalog_that_is_malformed_or_does_not_price_the_fleet_is_refused_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prices: {p5.48xlarge: {reserved: -1}}\n")
    err = refused(capsys, "--trace", "synthetic:5", "--days", "1", "--catalog", str(bad))
    assert "bad.yaml: prices.p5.48xlarge.reserved: expected a finite number more than zero" in err
    unpriced = tmp_path / "unpriced.yaml"
    unpriced.write_text("prices: {p5.48xlarge: {reserved: 80}}\nthroughput: {bf16: {H100: 1.0}}\n")
    fleet = a_fleet(tmp_path, "pools:\n  - {name: s, gpu: H100, capacityType: spot, nodes: 4}\n")
    err = refused(capsys, "--trace", "synthetic:5", "--days", "1", "--catalog", str(unpriced), "--fleet", str(fleet))
    assert "unpriced.yaml: the catalog has no price for p5.48xlarge spot (s-0), which the fleet" in err


def test_a_trace_with_no_job_in_the_window_is_refused_not_replayed_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = alibaba_trace(tmp_path)
    err = refused(capsys, "--trace", "alibaba", "--traces", str(traces), "--days", "1")
    assert "alibaba_gpu_v2023: no job to replay in the first 1 day(s); left out: none" in err


def test_a_worker_wider_than_every_node_is_reported_as_such_since_scale_cannot_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = alibaba_trace(tmp_path, GOOD_POD, a_pod(gpus="16"))
    err = refused(capsys, "--trace", "alibaba", "--traces", str(traces), "--days", "1")
    assert "1 job(s) have a worker wider than any node of the fleet (8 GPUs; --scale adds nodes" in err
    assert "p1 (1 x 16 GPUs)" in err


def test_an_out_path_that_is_a_file_is_refused_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "plots"
    taken.write_text("")
    err = refused(capsys, "--trace", "synthetic:5", "--days", "1", "--policies", "default", "--out", str(taken))
    assert f"--out {taken}: not a folder" in err
