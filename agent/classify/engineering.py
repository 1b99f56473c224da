"""Engineering "technology carriers": CAD drawings and models, simulation decks, machine programs.

Export-control announcements name design drawings, process parameters, processing
programs and simulation data; these are their file forms. Open formats are recognised
by content (DWG version string, DXF section markers, STEP's ISO-10303-21 header, IGES
column 73, STL, G-code words, Nastran/Abaqus/LS-DYNA decks); the native files of CAD
tools (SolidWorks, CATIA, NX, Inventor, Creo...) are containers without a stable public
signature, so for them the extension is the evidence and the tag says so.
"""

from __future__ import annotations

import re
import struct

from agent.classify.base import first_lines
from agent.events import Tag

# extension → (format, what it is); only used when the content does not contradict it
NATIVE_EXTENSIONS: dict[str, tuple[str, str]] = {
    "sldprt": ("solidworks", "SolidWorks part"),
    "sldasm": ("solidworks", "SolidWorks assembly"),
    "slddrw": ("solidworks", "SolidWorks drawing"),
    "catpart": ("catia", "CATIA part"),
    "catproduct": ("catia", "CATIA product"),
    "catdrawing": ("catia", "CATIA drawing"),
    "ipt": ("inventor", "Inventor part"),
    "iam": ("inventor", "Inventor assembly"),
    "idw": ("inventor", "Inventor drawing"),
    "prt": ("nx_creo", "NX/Creo part"),
    "asm": ("creo", "Creo assembly"),
    "drw": ("creo", "Creo drawing"),
    "x_t": ("parasolid", "Parasolid text"),
    "x_b": ("parasolid", "Parasolid binary"),
    "sat": ("acis", "ACIS model"),
    "jt": ("jt", "JT visualisation model"),
    "3dm": ("rhino", "Rhino model"),
    "f3d": ("fusion360", "Fusion 360 archive"),
    "skp": ("sketchup", "SketchUp model"),
    "fcstd": ("freecad", "FreeCAD document"),
    "step": ("step", "STEP model"),
    "stp": ("step", "STEP model"),
    "iges": ("iges", "IGES model"),
    "igs": ("iges", "IGES model"),
    "dwg": ("dwg", "AutoCAD drawing"),
    "dxf": ("dxf", "DXF drawing"),
    "stl": ("stl", "STL mesh"),
    "gcode": ("gcode", "G-code program"),
    "nc": ("gcode", "NC program"),
    "ngc": ("gcode", "NC program"),
    "tap": ("gcode", "NC program"),
    "cnc": ("gcode", "NC program"),
    "mpf": ("gcode", "Sinumerik part program"),
    "l5x": ("plc", "Rockwell Logix export"),
    "l5k": ("plc", "Rockwell Logix export"),
    "acd": ("plc", "Rockwell Logix project"),
    "ap15": ("plc", "Siemens TIA project"),
    "ap16": ("plc", "Siemens TIA project"),
    "ap17": ("plc", "Siemens TIA project"),
    "zap15": ("plc", "Siemens TIA archive"),
    "s7p": ("plc", "Siemens STEP 7 project"),
    "inp": ("abaqus", "Abaqus input deck"),
    "odb": ("abaqus", "Abaqus results"),
    "cdb": ("ansys", "ANSYS database"),
    "rst": ("ansys", "ANSYS results"),
    "cas": ("fluent", "Fluent case"),
    "mph": ("comsol", "COMSOL model"),
    "bdf": ("nastran", "Nastran bulk data"),
    "nas": ("nastran", "Nastran bulk data"),
    "op2": ("nastran", "Nastran results"),
    "k": ("lsdyna", "LS-DYNA keyword deck"),
    "fem": ("fem", "finite-element model"),
}
# extensions too common elsewhere to tag without a content signature
_NEEDS_CONTENT = {"prt", "asm", "drw", "tap", "nc", "cnc", "inp", "rst", "cas", "k", "sat"}
_NEEDS_CONTENT |= {"fem", "stl", "step", "stp", "iges", "igs", "dxf", "dwg", "gcode", "ngc"}
_NEEDS_CONTENT |= {"mpf", "bdf", "nas", "l5x", "l5k"}

_DWG = re.compile(rb"^AC10(0[2-9]|1[0-9]|2[0-9]|3[0-9])")
_GCODE_WORD = re.compile(
    # [ \t], not \s: with re.M a \s* at each line start runs over every later blank
    # line and back, quadratic in an 8 KB sample of newlines (2 s)
    r"^[ \t]*(?:N\d+[ \t]*)?(?:G0?[0-3]|G17|G2[01]|G9[01]|M0?[3-6]|M30|T\d+)\b",
    re.M,
)


def _tag(fmt: str, evidence: str) -> Tag:
    return Tag("engineering", evidence, {"format": fmt})


def binary_tag(head: bytes, size: int, ext: str) -> Tag | None:
    """Binary CAD signatures: DWG, binary STL, Parasolid, Rhino, JT."""
    m = _DWG.match(head)
    if m:
        return _tag("dwg", f"DWG drawing, version {head[:6].decode('ascii')}")
    if head.startswith(b"3D Geometry File Format"):
        return _tag("rhino", "Rhino 3DM model")
    if head.startswith(b"Version ") and b"JT" in head[:80]:
        return _tag("jt", "JT visualisation model")
    if size >= 84 and len(head) >= 84:
        (n,) = struct.unpack_from("<I", head, 80)
        if n > 0 and size == 84 + 50 * n and (ext == "stl" or not head.startswith(b"solid")):
            return _tag("stl", f"binary STL mesh, {n} triangles")
    return None


_ABAQUS_HEADING = re.compile(r"^[ \t]*\*HEADING\b", re.M)


def text_tag(text: str, ext: str) -> Tag | None:
    """Text CAD and machine formats recognised by their content."""
    t = text[:8192]
    stripped = t.lstrip()
    if stripped.startswith("ISO-10303-21;"):
        return _tag("step", "STEP model (ISO-10303-21 header)")
    lines = first_lines(t, 2)
    if len(lines) >= 2 and lines[0].strip() == "0" and lines[1].strip() in ("SECTION", "$ACADVER"):
        return _tag("dxf", "DXF drawing (SECTION header)")
    if lines and len(lines[0]) >= 73 and lines[0][72] == "S" and lines[0][73:].strip().isdigit():
        return _tag("iges", "IGES model (start section in column 73)")
    if stripped.startswith("solid") and "facet normal" in t:
        return _tag("stl", "ASCII STL mesh")
    if "<RSLogix5000Content" in t:
        return _tag("plc", "Rockwell Logix export (RSLogix5000Content)")
    if stripped.startswith("**ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        return _tag("parasolid", "Parasolid transmit file")
    upper = t.upper()
    if "*NODE" in upper and _ABAQUS_HEADING.search(upper):
        return _tag("abaqus", "Abaqus input deck (*HEADING, *NODE)")
    if stripped.upper().startswith("*KEYWORD"):
        return _tag("lsdyna", "LS-DYNA keyword deck")
    if "BEGIN BULK" in upper and ("GRID" in upper or "CEND" in upper):
        return _tag("nastran", "Nastran bulk data deck (BEGIN BULK)")
    if ("%FSLA" in t or "%FSTA" in t) and ("%MOMM*%" in t or "%MOIN*%" in t):
        return _tag("gerber", "PCB artwork (Gerber RS-274X format and unit statements)")
    if ext not in ("py", "c", "md") and len(_GCODE_WORD.findall(t)) >= 5:
        return _tag("gcode", "G-code program (motion and spindle words)")
    return None


def extension_tag(ext: str) -> Tag | None:
    """Native CAD files: the extension is the only evidence the content gives."""
    hit = NATIVE_EXTENSIONS.get(ext)
    if hit is None or ext in _NEEDS_CONTENT:
        return None
    fmt, what = hit
    return _tag(fmt, f"{what} (by extension .{ext})")
