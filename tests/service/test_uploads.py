"""Units of the upload path (issue 22): display names, ``filename*``, the per-photo limit while the
body streams, temporary-file errors as 507, the disk report of ``/ready``, the bounded method label."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from starlette.datastructures import Headers, UploadFile

from service.metrics import method_label
from service.storage import disk_report, low_disk_detail
from service.uploads import UploadParser, UploadRefused, display_name, extended_filename

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("fluke.jpg", "fluke.jpg"),
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("/abs/path/a.png", "a.png"),
        ("C:\\photos\\2019\\b.jpg", "b.jpg"),
        ("..\\..\\x\\evil.jpg", "evil.jpg"),
        ("e\u0301t\u00e9.jpg", "\u00e9t\u00e9.jpg"),  # NFC
        ("a\x00b\u202ec.jpg", "abc.jpg"),  # control and bidi-override characters dropped
        ("  spaced.jpg  ", "spaced.jpg"),
        ("..", None),
        ("dir/", None),
        ("", None),
        (None, None),
    ],
)
def test_display_name_keeps_only_a_printable_last_component(raw, shown):
    assert display_name(raw) == shown


def test_display_name_is_capped():
    assert display_name("x" * 500 + ".jpg") == "x" * 200


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        (b"form-data; name=\"files\"; filename*=utf-8''%C3%A9t%C3%A9%20fluke.jpg", "\u00e9t\u00e9 fluke.jpg"),
        (b"form-data; name=\"files\"; filename*=UTF-8'en'%E2%84%961.jpg", "\u21161.jpg"),
        (b"form-data; name=\"files\"; filename*=iso-8859-1''%E9t%E9.jpg", "\u00e9t\u00e9.jpg"),
        (b'form-data; name="files"; filename*="utf-8\'\'a%20b.jpg"', "a b.jpg"),
        (b"form-data; name=\"files\"; filename*=nosuchcharset''a%C3%A9.jpg", "a\u00e9.jpg"),
        (b'form-data; name="files"; filename="plain.jpg"', None),
    ],
)
def test_extended_filename_decodes_rfc5987(disposition, name):
    assert extended_filename(disposition) == name


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[Headers, bytes]:
    body = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="files"; %s\r\n\r\n%s\r\n'
        % (boundary.encode(), disposition.encode(), data)
        for disposition, data in parts
    )
    body += b"--%s--\r\n" % boundary.encode()
    return Headers({"content-type": f"multipart/form-data; boundary={boundary}"}), body


def _parse(headers, body, chunk=64 * 1024, **kw):
    consumed = [0]

    async def stream():
        for i in range(0, len(body), chunk):
            consumed[0] += len(body[i : i + chunk])
            yield body[i : i + chunk]

    async def main():
        return await UploadParser(headers, stream(), **kw).parse()

    return asyncio.run(main()), consumed[0]


def test_filename_star_makes_a_file_part_with_the_decoded_display_name(tmp_path):
    headers, body = _multipart(
        [("filename*=utf-8''..%2F..%2F%C3%A9t%C3%A9.jpg", b"\xff\xd8photo"), ('filename="../../etc/passwd.jpg"', b"x")]
    )
    form, _ = _parse(headers, body, max_file_bytes=MiB, tmp_dir=tmp_path)
    files = form.getlist("files")
    assert all(isinstance(f, UploadFile) for f in files)
    assert [f.filename for f in files] == ["\u00e9t\u00e9.jpg", "passwd.jpg"]
    assert asyncio.run(files[0].read()) == b"\xff\xd8photo"


def test_a_file_part_over_the_limit_is_refused_while_the_body_streams(tmp_path):
    headers, body = _multipart([('filename="big.jpg"', b"\0" * (8 * MiB))])
    with pytest.raises(UploadRefused) as info:
        _parse(headers, body, max_file_bytes=2 * MiB, tmp_dir=tmp_path)
    assert info.value.status_code == 413 and info.value.code == "upload_too_large"
    assert "2097152 bytes" in info.value.detail or "2 MiB" in info.value.detail
    # under the limit is fine; text fields keep Starlette's own limit
    form, consumed = _parse(headers, body, max_file_bytes=8 * MiB, tmp_dir=tmp_path)
    assert consumed == len(body) and asyncio.run(form.getlist("files")[0].read()) == b"\0" * (8 * MiB)


def test_stops_reading_the_body_at_the_limit(tmp_path):
    consumed = []
    headers, body = _multipart([('filename="big.jpg"', b"\0" * (16 * MiB))])

    async def stream():
        for i in range(0, len(body), 256 * 1024):
            consumed.append(i)
            yield body[i : i + 256 * 1024]

    async def main():
        await UploadParser(headers, stream(), max_file_bytes=2 * MiB, tmp_dir=tmp_path).parse()

    with pytest.raises(UploadRefused):
        asyncio.run(main())
    assert 2 * MiB <= consumed[-1] + 256 * 1024 <= 2 * MiB + 512 * 1024


EFBIG_SCRIPT = textwrap.dedent(
    """
    import asyncio, resource, sys
    from starlette.datastructures import Headers
    from service.uploads import UploadParser, UploadRefused

    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))  # files over 512 KiB: EFBIG
    b = b"bnd"
    body = b'--bnd\\r\\nContent-Disposition: form-data; name="files"; filename="a.jpg"\\r\\n\\r\\n'
    body += b"\\0" * (3 * 1024 * 1024) + b"\\r\\n--bnd--\\r\\n"

    async def stream():
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    async def main():
        headers = Headers({"content-type": "multipart/form-data; boundary=bnd"})
        try:
            await UploadParser(headers, stream(), max_file_bytes=20 * 1024 * 1024, tmp_dir=sys.argv[1]).parse()
        except UploadRefused as exc:
            print(exc.status_code, exc.code, exc.detail)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics checked on Linux")
def test_a_temporary_file_that_cannot_grow_gets_507(tmp_path):
    out = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.strip() == (
        "507 insufficient_storage no space left for the upload's temporary file: nothing was stored"
    ), out.stderr[-2000:]
    assert "upload refused: writing its temporary file in " + str(tmp_path) in out.stderr


def test_a_missing_temporary_folder_gets_503(tmp_path):
    headers, body = _multipart([('filename="a.jpg"', b"\0" * (2 * MiB))])
    with pytest.raises(UploadRefused) as info:
        _parse(headers, body, max_file_bytes=20 * MiB, tmp_dir=tmp_path / "gone")
    assert info.value.status_code == 503 and info.value.code == "store_unavailable"
    assert info.value.headers["Retry-After"] == "5"


def test_disk_report_and_its_message(tmp_path):
    report, low = disk_report({"gallery": tmp_path, "tmp": tmp_path / "missing"}, 0)
    assert report["gallery"]["free_bytes"] > 0 and report["gallery"]["total_bytes"] >= report["gallery"]["free_bytes"]
    assert low == ["tmp"] and report["tmp"]["free_bytes"] is None
    report, low = disk_report({"gallery": tmp_path}, 10**18)
    assert low == ["gallery"]
    report = {"tmp": {"free_bytes": 3 * MiB}, "gallery": {"free_bytes": None}}
    assert low_disk_detail(report, ["tmp", "gallery"], 100 * MiB) == (
        "low disk space: tmp folder has 3 MiB free, gallery folder unreadable below WHALEID_MIN_FREE_BYTES (100 MiB)"
    )


def test_method_label_is_bounded():
    assert [method_label(m) for m in ("GET", "POST", "DELETE", "PROPFIND", "MKCOL", "get", "X" * 50)] == [
        "GET",
        "POST",
        "DELETE",
        "other",
        "other",
        "other",
        "other",
    ]
