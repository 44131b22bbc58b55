"""``python -m p1_reader decode`` as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TELEGRAMS = FIXTURES / "telegrams"
ENCRYPTED = FIXTURES / "encrypted"
AM550 = TELEGRAMS / "nodedsmr_v5_nl_iskra_am550.txt"
KAIFA = TELEGRAMS / "dsmrparser_v4.2_nl_kaifa.txt"
T211_BAD_CRC = TELEGRAMS / "nodedsmr_v5_nl_sagemcom_t211.txt"
KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def decode(*args: str | Path) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "p1_reader", "decode", *map(str, args)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode()
    assert "kW" not in out  # never a power value
    return proc.returncode, [json.loads(line) for line in out.splitlines()], proc.stderr.decode()


def test_single_telegram() -> None:
    code, objs, err = decode(AM550)
    assert code == 0, err
    assert err == ""
    [obj] = objs
    assert obj["header"] == "/ISK5\\2M550T-1011"
    assert obj["meter_id"] == "E0034006810516416"
    assert obj["timestamp"] == "2018-11-06T13:04:29Z"  # 14:04:29 winter time (W)
    assert (obj["import_t1_wh"], obj["import_t2_wh"]) == (3808351, 2948827)
    assert (obj["export_t1_wh"], obj["export_t2_wh"]) == (1285951, 2876514)
    assert obj["mbus"] == [
        {
            "channel": 1, "device_type": 3, "meter_id": "G0039001700460117",
            "measured_at": "2018-11-06T13:00:10Z", "value": 1569646, "unit": "dm3",
        }
    ]


def test_several_files_in_order() -> None:
    code, objs, err = decode(KAIFA, AM550)
    assert code == 0, err
    assert [o["header"] for o in objs] == ["/KFM5KAIFA-METER", "/ISK5\\2M550T-1011"]


def test_stream_file_with_garbage_and_a_truncated_telegram() -> None:
    stream = FIXTURES / "streams" / "synthetic_mixed.txt"
    code, objs, err = decode(stream)
    assert [o["header"] for o in objs] == [
        "/KFM5KAIFA-METER", "/ISK5\\2M550T-1012", "/FLU5\\253769484_A",
        "/ISK5\\2M550T-1011", "/ISk5\\2MT382-1004",
    ]
    # the complete telegrams are decoded, but a truncated one is bad input
    assert code == 1
    assert f"{stream}: 1 truncated" in err


def test_bad_crc_names_file_index_and_reason(tmp_path: Path) -> None:
    code, objs, err = decode(T211_BAD_CRC)
    assert code == 1
    assert objs == []
    assert f"{T211_BAD_CRC}: telegram 1: bad-crc: CRC mismatch" in err
    # several telegrams back to back: the index says which one failed
    both = tmp_path / "capture.txt"
    both.write_bytes(KAIFA.read_bytes() + T211_BAD_CRC.read_bytes() + AM550.read_bytes())
    code, objs, err = decode(both)
    assert code == 1
    assert [o["header"] for o in objs] == ["/KFM5KAIFA-METER", "/ISK5\\2M550T-1011"]
    assert f"{both}: telegram 2: bad-crc" in err
    assert "telegram 1" not in err and "telegram 3" not in err


def test_no_crc_check() -> None:
    code, objs, err = decode("--no-crc-check", T211_BAD_CRC)
    assert code == 0, err
    assert objs[0]["header"] == "/Ene5\\T211 ESMR 5.0"


def test_dsmr4_telegram_without_crc(tmp_path: Path) -> None:
    data = KAIFA.read_bytes()
    no_crc = tmp_path / "kaifa_no_crc.txt"
    no_crc.write_bytes(data[: data.rindex(b"!") + 1] + b"\r\n")
    code, _, err = decode(no_crc)
    assert code == 1
    assert "telegram 1: bad-crc" in err
    code, objs, err = decode("--no-crc-check", no_crc)
    assert code == 0, err
    assert objs[0]["import_t1_wh"] == 1581123


def test_crc_less_dsmr22_decodes() -> None:
    code, objs, err = decode(TELEGRAMS / "dsmrparser_v2.2_nl_iskra_mt382.txt")
    assert code == 0, err
    assert objs[0]["import_t1_wh"] == 1001
    assert objs[0]["version"] is None


def test_dsmr22_telegram_without_a_bang_line_decodes() -> None:
    # a real DSMR 2.2 capture with no '!' line at all: complete at the end of the file
    no_end = TELEGRAMS / "nodedsmr_v2.2_nl_iskra_mt382_real.txt"
    code, objs, err = decode(no_end)
    assert code == 0, err
    assert err == ""
    [obj] = objs
    assert obj["import_t1_wh"] == 39837604
    assert obj["mbus"][0]["value"] == 13032850


def test_capture_without_its_final_line_end_decodes_every_telegram(tmp_path: Path) -> None:
    telegrams = [KAIFA, AM550, TELEGRAMS / "dsmrparser_v5_nl_iskra_am550_two_mbus.txt"] * 4
    capture = tmp_path / "capture.txt"
    capture.write_bytes(b"".join(path.read_bytes() for path in telegrams).rstrip(b"\r\n"))
    code, objs, err = decode(capture)
    assert code == 0, err
    assert err == ""
    assert len(objs) == 12
    assert objs[-1] == objs[2]  # the last one, whose '!CRC' line has no line end, is whole


def test_truly_truncated_files_are_still_rejected(tmp_path: Path) -> None:
    data = AM550.read_bytes()
    for name, head in [
        ("mid-line.txt", data[:300]),
        ("at-a-line-end.txt", data[: data.index(b"\n1-0:1.8.2") + 1]),  # DSMR 5: needs '!CRC'
    ]:
        cut = tmp_path / name
        cut.write_bytes(head)
        code, objs, err = decode(cut)
        assert code == 1
        assert objs == []
        assert f"{cut}: no complete telegram found" in err
        assert f"{cut}: 1 truncated and 0 oversize telegram(s) skipped" in err


def test_unreadable_and_non_hex_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    code, _, err = decode(missing)
    assert code == 1
    assert f"{missing}: cannot read" in err
    bad_hex = tmp_path / "frame.hex"
    bad_hex.write_text("DB 08 ZZ")
    code, _, err = decode("--key", KEY, bad_hex)
    assert code == 1
    assert f"{bad_hex}: not a hex file" in err


def test_encrypted_hex_and_bin_files() -> None:
    code, [expected], err = decode(ENCRYPTED / "plaintext_sagemcom_t210dr.txt")
    assert code == 0, err
    code, objs, err = decode(
        "--key",
        KEY,
        ENCRYPTED / "esphome_smarty_style_t210dr.hex",
        ENCRYPTED / "esphome_smarty_style_t210dr.bin",
    )
    assert code == 0, err
    assert objs == [expected, expected]
    assert expected["import_total_wh"] == 6545766


def test_encrypted_with_test_auth_key_and_without_aad() -> None:
    code, objs, err = decode(
        "--key", KEY, "--auth-key", "BB" * 16, ENCRYPTED / "dsmrparser_test_ggc_t210dr.hex"
    )
    assert code == 0, err
    assert objs[0]["header"] == "/EST5\\253710000_A"
    lux_key = "0123456789ABCDEF0123456789ABCDEF"
    code, objs, err = decode(
        "--key", lux_key, "--no-aad", ENCRYPTED / "nodedsmr_lux_spec_example_without_aad.hex"
    )
    assert code == 0, err
    assert objs[0]["header"] == "/Lux5\\253694471_M"
    code, objs, err = decode(
        "--key",
        lux_key,
        "--auth-key",
        "FFEEDDCCBBAA99887766554433221100",
        ENCRYPTED / "nodedsmr_lux_spec_example_with_aad.hex",
    )
    assert code == 0, err
    assert objs[0]["header"] == "/Lux5\\253694471_M"


def test_encrypted_failures() -> None:
    frame = ENCRYPTED / "dsmrparser_test_ggc_t210dr.hex"
    # default AK is the Smarty one; this frame was sealed with BB..BB
    code, objs, err = decode("--key", KEY, frame)
    assert code == 1
    assert objs == []
    assert f"{frame}: telegram 1: authentication-failed" in err
    code, _, err = decode(frame)
    assert code == 1
    assert f"{frame}: telegram 1: invalid-telegram: encrypted DLMS frame: pass --key" in err


def test_bad_key_argument_is_a_usage_error() -> None:
    code, _, err = decode("--key", "ABCD", AM550)
    assert code == 2
    assert "32 hex digits" in err
