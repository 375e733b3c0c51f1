"""Write AEDAT4 event files (the format CIFAR10-DVS ships in through tonic) for generated data.

Only what a reader needs: the magic line, an uncompressed IO header whose XML description declares
one event stream, and event packets. Both are flatbuffers, laid out here by hand (no flatbuffers
dependency); `aedat.Decoder`, which tonic.io.read_aedat4 uses, reads them back.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"#!AER-DAT4.0\r\n"
# flatbuffers struct Event {t: int64; x: int16; y: int16; on: bool} is 16 bytes, 8-aligned.
EVENT_DTYPE = np.dtype({"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"],
                        "offsets": [0, 8, 10, 12], "itemsize": 16})
PACKET_EVENTS = 4096  # events per packet, as DV writes them (any size is valid)


def _description(width: int, height: int) -> bytes:
    # No XML declaration: the reader takes the document's first child as the <dv> node.
    return (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
        '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="originalOutputName" type="string">events</attr>'
        '<attr key="typeDescription" type="string">Array of events (polarity ON/OFF).</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        '<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        '<attr key="source" type="string">dst data demo</attr>'
        "</node></node></node></dv>"
    ).encode()


def _io_header(description: bytes) -> bytes:
    """table Ioheader {compression: int32 = None; file_data_position: int64 = -1; description: string}."""
    # 0 root offset | 4 "IOHE" | 8 vtable (5 x u16) | 18 pad | 24 table | 44 string
    vtable = struct.pack("<5H", 10, 20, 4, 8, 16)
    table = struct.pack("<iiqI", 24 - 8, 0, -1, 44 - 40)  # soffset to vtable, compression, position, string
    string = struct.pack("<I", len(description)) + description + b"\0"
    buf = struct.pack("<I", 24) + b"IOHE" + vtable + b"\0" * 6 + table + string
    return buf + b"\0" * (-len(buf) % 8)


def _event_packet(events: np.ndarray) -> bytes:
    """Size-prefixed table EventPacket {elements: [Event]} with file identifier EVTS."""
    # 0 size | 4 root offset | 8 "EVTS" | 12 vtable (3 x u16) | 18 pad | 20 table | 28 pad | 36 vector length | 40 elements
    body = (struct.pack("<I", 20 - 4) + b"EVTS" + struct.pack("<3H", 6, 8, 4) + b"\0\0"
            + struct.pack("<iI", 20 - 12, 36 - 24) + b"\0" * 8 + struct.pack("<I", len(events))
            + events.tobytes())
    return struct.pack("<I", len(body)) + body


def write_aedat4(path: str | Path, t_us: np.ndarray, x: np.ndarray, y: np.ndarray, on: np.ndarray,
                 width: int, height: int) -> None:
    """Write one event stream (timestamps in microseconds, sorted) to `path`."""
    events = np.zeros(len(t_us), dtype=EVENT_DTYPE)
    events["t"], events["x"], events["y"], events["on"] = t_us, x, y, on
    with open(path, "wb") as f:
        header = _io_header(_description(width, height))
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        for start in range(0, max(len(events), 1), PACKET_EVENTS):
            packet = _event_packet(events[start:start + PACKET_EVENTS])
            f.write(struct.pack("<II", 0, len(packet)) + packet)
