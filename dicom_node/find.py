"""C-FIND (PS3.4 C.4.1): an identifier as QIDO-RS parameters, and each match as a response
with exactly the requested keys. The handler is QueryRetrieve.on_find (dicom_node.query_retrieve).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicom_node.identifiers import Request, key_text
from telehealth.dicomweb.service import qido

# Keys every response carries whether asked or not, and keys that say how to answer rather
# than what to match.
_QUERY_RETRIEVE_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005
_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
_NOT_MATCHED = {_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _RETRIEVE_AE_TITLE}


def query_params(request: Request) -> list[tuple[str, str]]:
    """QIDO-RS parameters for a C-FIND identifier: each key the index holds at this level or
    above, with its value to match (empty: universal matching, return only).

    Keys the index does not hold are not matched (an SCP need not support optional keys,
    PS3.4 C.2.2.1); they are returned empty.
    """
    params: list[tuple[str, str]] = []
    for elem in _keys(request):
        if elem.VR == "SQ":
            continue
        attr = qido.attribute(f"{int(elem.tag):08X}")
        if attr is None or attr.level > request.level or elem.VR in ("OB", "OW", "UN"):
            continue
        params.append((attr.keyword, key_text(elem.value)))
    return params


def _texts(match: dict[str, Any]) -> Iterator[str]:
    for element in match.values():
        for value in element.get("Value", []):
            if isinstance(value, dict):  # a person name's component groups
                yield from value.values()
            elif isinstance(value, str):
                yield value


def response_charset(requested: Any, match: dict[str, Any]) -> str | None:
    """The Specific Character Set of one response (PS3.4 C.4.1.1.3.2).

    The caller's own when every value fits in it (a clinic asking in GB18030 reads GB18030);
    UTF-8 (ISO_IR 192) when something does not; none when everything is ASCII and none was
    given. pydicom encodes the values in the set named here.
    """
    texts = list(_texts(match))
    asked = key_text(requested)
    # Only a single set is echoed as is: code extensions ("\\ISO 2022 IR 87") need escape
    # sequences this check cannot vouch for.
    codec = python_encoding.get(asked) if "\\" not in asked else None
    if codec:
        try:
            for text in texts:
                text.encode(codec)
            return asked
        except UnicodeEncodeError:
            pass
    if all(text.isascii() for text in texts):
        return asked or None
    return "ISO_IR 192"


def find_response(request: Request, match: dict[str, Any], ae_title: str) -> Dataset:
    """One C-FIND response: exactly the requested keys, with values where the index has them,
    plus Specific Character Set, Query/Retrieve Level and Retrieve AE Title."""
    requested = _keys(request)
    values = {tag: match[tag] for tag in map(_json_tag, requested) if tag in match}
    found = Dataset.from_json(values)
    ds = Dataset()
    charset = response_charset(request.identifier.get("SpecificCharacterSet"), values)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = request.level_name
    ds.RetrieveAETitle = ae_title
    for elem in requested:
        if elem.tag in found:
            ds[elem.tag] = found[elem.tag]
        elif elem.tag == _INSTANCE_AVAILABILITY:
            ds.InstanceAvailability = "ONLINE"  # everything held is in the spool or the store
        elif elem.VR == "SQ":
            ds.add_new(elem.tag, "SQ", [])
        else:
            # A key the index does not hold: present and empty (zero length).
            ds.add_new(elem.tag, elem.VR if " or " not in elem.VR else "UN", None)
    return ds


def _keys(request: Request) -> list[DataElement]:
    """The keys to match and return: not the ones every response carries anyway, nor group
    lengths or anything below group 0008, which a Data Set does not hold (PS3.5 §7)."""
    return [
        elem
        for elem in request.identifier
        if elem.tag not in _NOT_MATCHED and elem.tag.element and elem.tag.group >= 0x0008
    ]


def _json_tag(elem: DataElement) -> str:
    return f"{int(elem.tag):08X}"
