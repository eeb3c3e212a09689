"""Response models of the API (they drive the OpenAPI docs and their examples)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from index.metadata import TAKEN_AT_PATTERN


class Evidence(BaseModel):
    """Why a candidate is ranked where it is. Fields absent in a scoring mode are left out."""

    model_config = ConfigDict(extra="allow")

    embedding_similarity: float | None = Field(None, description="Cosine similarity of the embeddings, -1..1.")
    inliers: int | None = Field(None, description="RANSAC inliers of the local-feature match with the best photo.")
    local_score: float | None = Field(None, description="Calibrated local-match probability, 0..1.")
    fused_score: float | None = Field(None, description="Calibrated fusion of embedding and local scores, 0..1.")
    lnbnn_score: float | None = Field(
        None,
        description="HotSpotter's LNBNN score of the candidate's best-voted photo (sum of distance margins of the "
        "descriptors that voted for it; lnbnn matcher only).",
    )
    best_image_id: int | None = Field(None, description="The candidate's gallery photo that matches best.")
    exact_photo: bool | None = Field(
        None, description="The uploaded photo is this gallery photo, byte for byte (score 1.0 whatever the model says)."
    )
    keypoint_pairs: list[list[list[float]]] | None = Field(
        None, description="With explain=true: inlier pairs [[x_query, y_query], [x_gallery, y_gallery]] in pixels."
    )


class FlukeCheckInfo(BaseModel):
    """The evidence behind ``looks_like_fluke`` (see index/fluke_check.py)."""

    reason: str | None = Field(
        None,
        description="Why the photo does not look like a fluke: too_small, unlike_fluke_photos or unlike_gallery "
        "(absent when it does).",
    )
    gallery_similarity: float | None = Field(
        None, description="Cosine similarity of the photo's embedding to the nearest gallery whale."
    )
    min_similarity: float | None = Field(
        None,
        description="Below this similarity the photo is unlike every gallery photo (from the gallery itself, "
        "leave one whale out); null while the gallery is too small.",
    )
    reference_photos: int = Field(0, description="Gallery photos behind min_similarity.")
    min_side_px: int = Field(description="The photo's shorter side in pixels (under 32: too small).")
    photo_distance: float | None = Field(
        None, description="Distance of the photo's colour and texture statistics from those of real fluke photos."
    )
    max_photo_distance: float | None = Field(None, description="Above this distance: unlike fluke photos.")


class Prediction(BaseModel):
    rank: int = Field(description="1 is the best.")
    whale_id: str = Field(description="A gallery identity, or new_whale.")
    score: float = Field(description="The scoring mode's score; new_whale carries the threshold.")
    evidence: Evidence | None = None


class ScopeInfo(BaseModel):
    applied: dict = Field(description="The criteria: location, bbox, near, date_from, date_to.")
    whales_in_scope: int = Field(description="Whales with a photo inside the scope: the only possible answers.")


class IdentifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "predictions": [
                    {
                        "rank": 1,
                        "whale_id": "w_1287fbc",
                        "score": 0.8123,
                        "evidence": {"embedding_similarity": 0.8123, "best_image_id": 42},
                    },
                    {"rank": 2, "whale_id": "new_whale", "score": 0.55},
                    {
                        "rank": 3,
                        "whale_id": "w_98baff9",
                        "score": 0.5012,
                        "evidence": {"embedding_similarity": 0.5012, "best_image_id": 7},
                    },
                    {
                        "rank": 4,
                        "whale_id": "w_7554f44",
                        "score": 0.4721,
                        "evidence": {"embedding_similarity": 0.4721, "best_image_id": 13},
                    },
                    {
                        "rank": 5,
                        "whale_id": "w_1eafe46",
                        "score": 0.4420,
                        "evidence": {"embedding_similarity": 0.442, "best_image_id": 99},
                    },
                ],
                "boxes": [[120.0, 80.5, 910.0, 402.0], [80.5, 48.4, 949.5, 434.1]],
                "detected_box": [120.0, 80.5, 910.0, 402.0],
                "image_size": [1050, 525],
                "exif_rotated": False,
                "threshold": 0.55,
                "scoring": "embedding",
                "model_version": "densenet121-cpu-small-1a2b3c4d",
                "looks_like_fluke": True,
                "fluke_check": {
                    "gallery_similarity": 0.8123,
                    "min_similarity": 0.3391,
                    "reference_photos": 2000,
                    "min_side_px": 525,
                    "photo_distance": 1.91,
                    "max_photo_distance": 4.5014,
                },
                "timing_ms": {"decode": 6.1, "boxes": 9.8, "embed": 120.4, "search": 0.4, "total": 140.2},
            }
        }
    )

    predictions: list[Prediction] = Field(
        description="Top-k distinct identities, best first, new_whale placed by the threshold."
    )
    boxes: list[list[float]] = Field(
        description="The TTA boxes embedded, [x0, y0, x1, y1] pixels on the upright photo."
    )
    detected_box: list[float] | None = Field(None, description="The detector's box, when the bundle has a detector.")
    image_size: list[int] = Field(description="[width, height] of the upright photo in pixels.")
    exif_rotated: bool
    threshold: float = Field(description="The new_whale threshold used.")
    scoring: str = Field(description="embedding, local or fused.")
    model_version: str
    looks_like_fluke: bool = Field(
        description="False when the photo is too small or unlike every gallery photo (a circuit board, an empty "
        "sea): its ranking then means little; review it as 'not a fluke / unusable' before 'new whale'."
    )
    fluke_check: FlukeCheckInfo
    timing_ms: dict[str, float] = Field(description="Milliseconds per stage: decode, boxes, embed, search, total.")
    scope: ScopeInfo | None = Field(None, description="With scope_* parameters: the scope applied.")
    trailing_edge: dict | None = Field(
        None,
        description="edge_fused mode: whether the query's trailing edge was found (found, notch_index, and with "
        "explain=true its points [[x, y], ...] in pixels), else why not (reason: too_small, cut_off, not_found).",
    )
    photo_metadata: PhotoMetadataModel | None = Field(
        None, description="The query photo's date and place: the form fields sent, completed by its EXIF."
    )


class NearDuplicate(BaseModel):
    file: str | None = Field(description="The uploaded file it concerns.")
    whale_id: str
    image_id: int
    bits: int = Field(description="Bits of the 64-bit perceptual hashes that differ (0: the same picture).")


class PhotoMetadataModel(BaseModel):
    """When and where, who: from the form fields, else the photo's EXIF (see index/metadata.py)."""

    model_config = ConfigDict(extra="forbid")

    taken_at: str | None = Field(
        None, max_length=40, pattern=TAKEN_AT_PATTERN, description="ISO 8601, with its UTC offset when known."
    )
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    location: str | None = Field(None, max_length=200)
    encounter_id: str | None = Field(None, max_length=100)
    photographer: str | None = Field(None, max_length=200)
    notes: str | None = Field(None, max_length=2000)


class EnrolResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "whale_id": "whale-00012",
                "images_added": 2,
                "image_ids": [311, 312],
                "duplicates": 0,
                "images_total": 2,
                "gallery_size": 1085,
                "also_enrolled_as": [],
            }
        }
    )

    whale_id: str
    images_added: int
    image_ids: list[int]
    duplicates: int = Field(description="Photos already stored for this whale (same bytes): not added again.")
    images_total: int
    gallery_size: int = Field(description="Identities in the gallery after the change.")
    also_enrolled_as: list[str] = Field(
        default_factory=list,
        description="Other whales that already hold one of these photos (same bytes): worth a second look.",
    )
    near_duplicates: list[NearDuplicate] = Field(
        default_factory=list,
        description="Stored photos that look like one of these (a re-saved or resized copy: perceptual hash "
        "within 8 of 64 bits) without being the same bytes: worth a second look.",
    )


class WhaleSummary(BaseModel):
    whale_id: str
    images: int
    created_at: str


class GalleryPage(BaseModel):
    total: int
    offset: int
    limit: int
    whales: list[WhaleSummary]


class ImageInfo(BaseModel):
    image_id: int
    sha256: str
    source: str | None
    box: list[float] | None = Field(description="The box embedded first, [x0, y0, x1, y1] pixels.")
    added_at: str
    thumbnail_url: str | None
    metadata: PhotoMetadataModel = Field(default_factory=PhotoMetadataModel)
    has_original: bool = Field(False, description="The original photo is stored (export and reindex need it).")


class WhaleDetail(BaseModel):
    whale_id: str
    images: list[ImageInfo]


#: A whale id a request may create: index.store.validate_whale_id as a pattern (the reserved new_whale
#: excluded by a lookahead, hence Python's regex engine for these models).
NEW_WHALE_ID = r"^(?!new_whale$)[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class RenameRequest(BaseModel):
    model_config = ConfigDict(regex_engine="python-re")

    whale_id: str = Field(pattern=NEW_WHALE_ID, description="The new whale id (not 'new_whale', reserved).")


class MergeRequest(BaseModel):
    into: str = Field(description="The whale that receives the photos; the one in the path disappears.")


class MoveRequest(BaseModel):
    model_config = ConfigDict(regex_engine="python-re")

    # at most 2^53 - 1: a JSON number above it loses its last digits in many clients (and in the document)
    image_ids: list[Annotated[int, Field(ge=1, le=2**53 - 1)]] = Field(
        min_length=1, max_length=1000, description="Photos of the whale in the path."
    )
    to: str = Field(pattern=NEW_WHALE_ID, description="A known whale, or a new whale id (created): a split.")


class CatalogueChange(BaseModel):
    whale_id: str = Field(description="The whale after the change (the renamed, receiving or target whale).")
    gallery_size: int
    moved_image_ids: list[int] = Field(default_factory=list)
    dropped_duplicates: list[int] = Field(
        default_factory=list, description="Photos the receiving whale already held (same bytes): removed."
    )
    created: bool = False
    source_deleted: bool = False


class AuditEntry(BaseModel):
    audit_id: int
    at: str
    operation: str
    actor: str | None = Field(description="'key:<fingerprint>' of the API key used, or 'anonymous'; never the key.")
    details: dict


class AuditPage(BaseModel):
    total: int
    offset: int
    limit: int
    entries: list[AuditEntry]


class Deleted(BaseModel):
    whale_id: str
    image_id: int | None = None
    identity_deleted: bool
    gallery_size: int


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"detail": "empty upload: the file has no bytes", "code": "empty_upload"}}
    )

    detail: str
    code: str | None = None


ERRORS = {
    400: {"model": ErrorBody, "description": "Empty upload or missing file."},
    401: {"model": ErrorBody, "description": "Missing API key."},
    403: {"model": ErrorBody, "description": "Wrong API key."},
    404: {"model": ErrorBody, "description": "Unknown whale or image."},
    409: {"model": ErrorBody, "description": "The new whale id is taken."},
    413: {"model": ErrorBody, "description": "Upload over the byte or pixel limit."},
    415: {"model": ErrorBody, "description": "Not an image, or an unsupported format."},
    422: {"model": ErrorBody, "description": "Undecodable or truncated image; invalid parameter or whale id."},
}
