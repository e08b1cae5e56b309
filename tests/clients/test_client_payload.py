"""What the clients accept as an image, the Content-Type they send, target expansion, OIP encodings
and the typed results' JSON forms."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from clients import oip
from clients.payload import content_type, expand_targets, to_bytes
from clients.types import ClassifyResult, ImageResult, Prediction, merge, result_from_json
from tests.support.client_testutil import sample_images


def test_every_image_form_becomes_encoded_bytes(tmp_path):
    path = sample_images()[0]
    data = path.read_bytes()
    assert to_bytes(data) is data
    assert to_bytes(bytearray(data)) == data == to_bytes(memoryview(data))
    assert to_bytes(path) == data == to_bytes(str(path))
    with open(path, "rb") as f:
        assert to_bytes(f) == data
    png = to_bytes(Image.new("RGB", (5, 4), (1, 2, 3)))
    with Image.open(io.BytesIO(png)) as back:
        assert back.size == (5, 4) and back.getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(TypeError, match="an image must be"):
        to_bytes(42)
    (tmp_path / "note.txt").write_text("text")
    with open(tmp_path / "note.txt") as text, pytest.raises(TypeError, match="binary mode"):
        to_bytes(text)


@pytest.mark.parametrize(
    ("fmt", "media"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("BMP", "image/bmp"),
     ("TIFF", "image/tiff"), ("WEBP", "image/webp")],
)
def test_content_type_from_magic_number(fmt, media):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format=fmt)
    assert content_type(buffer.getvalue()) == media
    assert content_type(b"plain text") == "application/octet-stream"


def test_targets_expand_files_folders_and_globs(tmp_path):
    (tmp_path / "x" / "y").mkdir(parents=True)
    for name in ("x/a.jpg", "x/y/b.PNG", "x/.hidden.jpg", "x/notes.txt", "c.jpeg"):
        (tmp_path / name).write_bytes(b"")
    files, missing = expand_targets([str(tmp_path / "x"), str(tmp_path / "**" / "*.jpeg"),
                                     str(tmp_path / "x" / "a.jpg"), str(tmp_path / "none*.jpg")])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["x/a.jpg", "x/y/b.PNG", "c.jpeg"]
    assert missing == [str(tmp_path / "none*.jpg")]


def test_oip_bytes_tensor_and_answers():
    raw = oip.pack_bytes([b"ab", b"", b"xyz"])
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"
    body, headers = oip.http_request([b"ab", b"xyz"], timeout_s=0.5)
    length = int(headers[oip.BINARY_HEADER])
    assert body[length:] == oip.pack_bytes([b"ab", b"xyz"])
    assert b'"binary_data_size":13' in body[:length] and b'"timeout":500000' in body[:length]

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = (b'{"model_name":"m","model_version":"2","outputs":[{"name":"logits","datatype":"FP32",'
              b'"shape":[2,3],"parameters":{"binary_data_size":24}}]}')
    headers = {"inference-header-content-length": str(len(header))}
    logits = oip.parse_http_response(header + values.tobytes(), headers)
    assert (logits.model_name, logits.model_version) == ("m", "2")
    np.testing.assert_array_equal(logits.values, values)
    json_answer = (b'{"model_name":"m","outputs":[{"name":"l","datatype":"FP32","shape":[1,2],'
                   b'"data":[1.5,2]}]}')
    np.testing.assert_array_equal(oip.parse_http_response(json_answer, {}).values, [[1.5, 2.0]])

    request = oip.grpc_request("m", "", [b"ab"], request_id="r1", timeout_s=2)
    assert request.inputs[0].datatype == "BYTES" and list(request.inputs[0].shape) == [1]
    assert request.raw_input_contents[0] == oip.pack_bytes([b"ab"])
    assert request.parameters["timeout"].int64_param == 2_000_000


def test_results_round_trip_through_json():
    answer = {"model_name": "m", "model_version": "4", "results": [
        {"predictions": [{"label": "cat", "index": 3, "score": 0.75},
                         {"label": "dog", "index": 1, "score": 0.2}]},
        {"predictions": [{"label": "dog", "index": 1, "score": 0.5}]},
    ]}
    result = result_from_json(answer)
    assert result.to_dict() == answer
    assert result[0].top == Prediction("cat", 3, 0.75) and result[0].indices == [3, 1]
    assert result[1].model_version == "4" and len(result) == 2
    both = merge([result, ClassifyResult("m", "5", (ImageResult((Prediction("x", 0, 1.0),), "m", "5"),))])
    assert len(both) == 3 and both.model_version == "4" and both[2].model_version == "5"
