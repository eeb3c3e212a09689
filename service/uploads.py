"""Multipart uploads as the service parses them: a per-photo byte limit while the body streams, the
temporary files in ``WHALEID_TMP_DIR``, a full disk answered with 507, and file names that are only
display names.

Starlette's parser (under FastAPI's ``File()`` parameters) spools each file part to a temporary file
and has no limit per file part; a part is read whole, then refused by the decoder. Here a part is
refused with 413 as soon as it passes ``WHALEID_MAX_UPLOAD_BYTES`` (the body stops being read; the
whole-body limit stays with :class:`service.limits.BodyLimitMiddleware`). Routers that take uploads
use :class:`UploadRoute`.

File names: ``filename="..."`` as RFC 7578 asks, or only ``filename*=utf-8''...`` (RFC 5987/2231),
which some clients send for non-ASCII names (python-multipart ignores it, so the part would become a
text field). Either way the name kept is :func:`display_name`: the last path component, without
control characters, never used as a path.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import tempfile
import unicodedata
from contextlib import aclosing
from email.utils import decode_rfc2231
from pathlib import Path
from tempfile import SpooledTemporaryFile
from urllib.parse import unquote

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from core.errors import InsufficientStorageError, StorageError
from core.preprocess import describe_bytes, over_limit

log = logging.getLogger(__name__)

#: longest display name kept, in characters
MAX_NAME_CHARS = 200
_EXTENDED = re.compile(r";\s*filename\*\s*=\s*(\"[^\"]*\"|[^;]*)", re.IGNORECASE)
NO_SPACE_FOR_UPLOAD = "no space left for the upload's temporary file: nothing was stored"
TMP_UNAVAILABLE = "the upload's temporary file could not be written: nothing was stored, retry later"


class UploadRefused(HTTPException):
    """An upload refused while its body streams in, with the stable ``code`` of the error body."""

    def __init__(self, status_code: int, detail: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(status_code, detail, headers)
        self.code = code


def display_name(name: str | None) -> str | None:
    """The name an uploaded photo is kept under: only its last path component, printable, trimmed.

    ``../../etc/passwd.jpg`` and ``C:\\photos\\a.jpg`` become ``passwd.jpg`` and ``a.jpg``; a name
    with nothing left (``..``, empty) becomes None. It is shown and stored, never used as a path.

    Args:
        name: the client's file name (already decoded to text), or None.

    Returns:
        At most ``MAX_NAME_CHARS`` characters, NFC-normalised, or None.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        return None
    return name[:MAX_NAME_CHARS]


def extended_filename(content_disposition: bytes) -> str | None:
    """The ``filename*`` parameter (RFC 5987/2231: ``charset'lang'percent-encoded``) decoded, or None."""
    m = _EXTENDED.search(content_disposition.decode("latin-1"))
    if m is None:
        return None
    value = m.group(1).strip().strip('"')
    charset, _lang, encoded = decode_rfc2231(value)
    if charset is None:  # no charset'lang' prefix: not the extended form, take it as it is
        return unquote(value, encoding="utf-8", errors="replace")
    try:
        return unquote(encoded, encoding=charset, errors="replace")
    except LookupError:
        return unquote(encoded, encoding="utf-8", errors="replace")


class UploadParser(MultiPartParser):
    """Starlette's multipart parser with a byte limit per file part, the temporary files in
    ``tmp_dir``, ``filename*`` names, and OS errors of the temporary files as 507/503.

    Args:
        headers, stream, max_files, max_fields, max_part_size: as ``MultiPartParser``.
        max_file_bytes: largest file part, in bytes (413 as soon as a part passes it).
        tmp_dir: folder of the temporary files (None: the system's).

    Raises (from ``parse``):
        UploadRefused: 413 ``upload_too_large``; 507 ``insufficient_storage`` when the temporary
            folder's disk is full; 503 ``store_unavailable`` for other errors writing it.
        MultiPartException: malformed multipart (Starlette's 400).
    """

    def __init__(self, headers, stream, *, max_file_bytes: int, tmp_dir: Path | None = None, **limits):
        super().__init__(headers, stream, **limits)
        self.max_file_bytes = int(max_file_bytes)
        self.tmp_dir = tmp_dir
        self._part_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._part_bytes += end - start
            if self._part_bytes > self.max_file_bytes:
                raise UploadRefused(
                    413,
                    over_limit("upload", describe_bytes(self.max_file_bytes), "WHALEID_MAX_UPLOAD_BYTES"),
                    "upload_too_large",
                    {"Connection": "close"},
                )
        super().on_part_data(data, start, end)

    def on_headers_finished(self) -> None:
        disposition = self._current_part.content_disposition
        _, options = parse_options_header(disposition)
        extended = extended_filename(disposition)
        if extended is None and b"filename" not in options:
            return super().on_headers_finished()  # a text field
        if b"name" not in options:
            raise MultiPartException('The Content-Disposition header field "name" must be provided.')
        self._current_part.field_name = options[b"name"].decode(self._charset, errors="replace")
        self._current_files += 1
        if self._current_files > self.max_files:
            raise MultiPartException(f"Too many files. Maximum number of files is {self.max_files}.")
        name = extended if extended is not None else options[b"filename"].decode(self._charset, errors="replace")
        spool = SpooledTemporaryFile(max_size=self.spool_max_size, dir=self.tmp_dir)  # noqa: SIM115 - closed with the form
        self._files_to_close_on_error.append(spool)
        self._current_part.file = UploadFile(
            file=spool,  # type: ignore[arg-type]
            size=0,
            filename=display_name(name),
            headers=Headers(raw=self._current_part.item_headers),
        )

    async def parse(self) -> FormData:
        try:
            return await super().parse()
        except OSError as exc:
            folder = self.tmp_dir or Path(tempfile.gettempdir())
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                free = -1
            log.error("upload refused: writing its temporary file in %s failed (%r; %d bytes free)", folder, exc, free)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise UploadRefused(507, NO_SPACE_FOR_UPLOAD, InsufficientStorageError.code) from exc
            raise UploadRefused(
                503, TMP_UNAVAILABLE, StorageError.code, {"Retry-After": str(StorageError.retry_after_s)}
            ) from exc


class UploadRequest(Request):
    """A request whose multipart form is parsed by :class:`UploadParser` with the app's settings."""

    async def _get_form(
        self, *, max_files: int | float = 1000, max_fields: int | float = 1000, max_part_size: int = 1024 * 1024
    ) -> FormData:
        if self._form is None:
            content_type, _ = parse_options_header(self.headers.get("Content-Type"))
            if content_type == b"multipart/form-data":
                settings = self.app.state.settings
                try:
                    async with aclosing(self.stream()) as stream:
                        parser = UploadParser(
                            self.headers,
                            stream,
                            max_files=max_files,
                            max_fields=max_fields,
                            max_part_size=max_part_size,
                            max_file_bytes=settings.max_upload_bytes,
                            tmp_dir=settings.tmp_dir,
                        )
                        self._form = await parser.parse()
                except MultiPartException as exc:
                    raise HTTPException(400, exc.message) from exc
        return await super()._get_form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)


class UploadRoute(APIRoute):
    """Route class of routers that take uploads: their requests are :class:`UploadRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def upload_handler(request: Request) -> Response:
            return await handler(UploadRequest(request.scope, request.receive))

        return upload_handler
