"""Form fields shared by the upload routes: a photo's date, place and notes (``POST /gallery`` and
``POST /identify``), declared once as a FastAPI dependency so both document and validate them alike."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form

from index.metadata import TAKEN_AT_PATTERN, PhotoMetadata, parse_metadata

#: taken_at as a form field: empty (not given) or an ISO 8601 date/date-time
TAKEN_AT_FORM = "^$|" + TAKEN_AT_PATTERN  # both alternatives anchored (a schema pattern is a search)
#: The names of the photo metadata form fields.
METADATA_FIELDS = tuple(PhotoMetadata.model_fields)


def photo_metadata_form(
    taken_at: Annotated[
        str | None,
        Form(
            max_length=40,
            pattern=TAKEN_AT_FORM,
            description="When the photo was taken, ISO 8601 (e.g. 2019-07-14T09:31:05-04:00); default: its EXIF.",
        ),
    ] = None,
    latitude: Annotated[
        float | None, Form(ge=-90, le=90, description="Where, decimal degrees (WGS 84); default: its EXIF GPS.")
    ] = None,
    longitude: Annotated[
        float | None, Form(ge=-180, le=180, description="Where, decimal degrees (WGS 84); default: its EXIF GPS.")
    ] = None,
    location: Annotated[
        str | None, Form(max_length=200, description="A place name, e.g. Hervey Bay (what a scoped search matches).")
    ] = None,
    encounter_id: Annotated[
        str | None, Form(max_length=100, description="The field team's encounter or sighting id.")
    ] = None,
    photographer: Annotated[str | None, Form(max_length=200, description="Who took the photo.")] = None,
    notes: Annotated[str | None, Form(max_length=2000, description="Free text.")] = None,
) -> PhotoMetadata:
    """The photo metadata a request sent (empty fields are "not given").

    Raises:
        InvalidRequestError: a value :class:`~index.metadata.PhotoMetadata` refuses.
    """
    return parse_metadata(
        dict(
            taken_at=taken_at,
            latitude=latitude,
            longitude=longitude,
            location=location,
            encounter_id=encounter_id,
            photographer=photographer,
            notes=notes,
        )
    )


MetadataForm = Annotated[PhotoMetadata, Depends(photo_metadata_form)]
