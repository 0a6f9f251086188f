"""The project's class_id (Table 3) and prevalence (Table 5) tables against the appendix's own CSVs.

The CSVs live in ../shared/data/tables/ (copied from the Collection 9 mining appendix); the project
must hold every row of them. The substance-name table is checked on the real ANM SIGMINE titles of
Amapá: no title falls to 301 unless its substance truly has no Table 3 code, each such case listed.
"""
from __future__ import annotations

import csv

import pytest

from pipeline.io import tables
from tests.conftest import shared_path


def read_csv(name: str) -> list[dict]:
    with open(shared_path("tables", name), encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_table_3_code_with_its_three_levels_in_the_tables_order():
    rows = read_csv("class_id_table3.csv")
    assert len(rows) == 37
    table = tables.load_class_id_table()
    ours = {entry["code"]: entry for entry in table.codes}
    missing = [row["class_id"] for row in rows if int(row["class_id"]) not in ours]
    assert not missing, f"Table 3 codes missing from class_id.json: {missing}"
    for row in rows:
        entry = ours[int(row["class_id"])]
        assert (entry["level_1"], entry["level_2"], entry["level_3"]) == (row["level_1"], row["level_2"], row["level_3"])
        assert entry["type"] == ("garimpo" if row["level_1"] == "1. Garimpo" else "industrial")
    # The table's order (130 sits after 115), then only codes beyond Table 3 (301).
    listed = [entry["code"] for entry in table.codes]
    assert listed[: len(rows)] == [int(row["class_id"]) for row in rows]
    assert listed[len(rows):] == [301]


def test_every_table_3_substance_has_names_and_resolves_to_its_own_code():
    table = tables.load_class_id_table()
    for entry in table.codes:
        if entry["substance"] is None:
            continue
        names = table.substances[entry["substance"]]["names"]
        assert names, entry
        for name in names:
            assert table.code_for(entry["type"], table.substance_of(name)) == entry["code"], (name, entry["code"])


ORE_SPELLINGS = {  # SIGMINE / GeoSGB spellings, with and without "MINÉRIO DE" → industrial code
    "NÍQUEL": 104, "AMIANTO": 105, "MOLIBDÊNIO": 106, "TITÂNIO": 107, "CROMO": 108, "MAGNÉSIO": 111,
    "BÁRIO": 112, "ESTANHO": 114, "FERRO": 102, "MANGANÊS": 103, "COBRE": 109, "ALUMÍNIO": 110,
    "NIÓBIO": 113, "OURO": 115, "ZINCO": 130, "FLÚOR": 118, "FOSFATO": 119, "GRAFITA": 120, "SILÍCIO": 121,
    "CARVÃO": 127, "URÂNIO": 128,
}
OTHER_SPELLINGS = {
    "MAGNESITA": 111, "BARITA": 112, "CASSITERITA": 114, "AREIA": 117, "CASCALHO": 117, "BRITA": 117,
    "ARGILA": 117, "SAIBRO": 117, "FLUORITA": 118, "APATITA": 119, "GRAFITE": 120, "QUARTZO": 121,
    "CALCÁRIO": 122, "DIAMANTE": 124, "ESMERALDA": 124, "GRANITO": 125, "MÁRMORE": 125, "CARVÃO MINERAL": 127,
    "PETRÓLEO": 129, "GÁS NATURAL": 129, "ILMENITA": 107, "CROMITA": 108, "BAUXITA": 110, "CRISOTILA": 105,
}


@pytest.mark.parametrize("name,code", [*ORE_SPELLINGS.items(), *OTHER_SPELLINGS.items()])
def test_source_spellings_map_to_table_3_codes(name, code):
    table = tables.load_class_id_table()
    assert table.code_for("industrial", table.substance_of(name)) == code
    if name in ORE_SPELLINGS:
        assert table.code_for("industrial", table.substance_of(f"Minério de {name.lower()}")) == code


def test_industrial_and_garimpo_variants_resolve_to_their_own_codes():
    table = tables.load_class_id_table()
    assert table.code_for("industrial", table.substance_of("CASSITERITA")) == 114
    assert table.code_for("garimpo", table.substance_of("CASSITERITA")) == 214
    assert table.code_for("garimpo", table.substance_of("DIAMANTE")) == 224
    assert table.code_for("garimpo", table.substance_of("GRANITO")) == 225
    assert table.code_for("garimpo", table.substance_of("AREIA")) == 217
    assert table.code_for("garimpo", table.substance_of("MINÉRIO DE OURO")) == 215
    assert table.code_for("garimpo", table.substance_of("CALCÁRIO")) == 216  # no garimpo limestone: its group


# SIGMINE SUBS values of Amapá with no Table 3 substance of their own, and why.
NOT_A_MINING_SUBSTANCE = {  # not used as evidence at all
    "ÁGUA MINERAL": "mineral water: not a Table 3 substance",
    "ÁGUA POTÁVEL DE MESA": "table water: not a Table 3 substance",
    "DADO NÃO CADASTRADO": "'data not registered': no substance",
}
GROUP_ONLY = {  # Table 3 has no code for the substance: the type's group code (or 301 where the type has none)
    "TANTALITA": 101, "MINÉRIO DE TÂNTALO": 101, "TÂNTALO": 101, "PALÁDIO": 101, "PLATINA": 101,
    "ZIRCONITA": 101, "TUNGSTÊNIO": 101, "LÍTIO": 101, "CHUMBO": 101,
    "CAULIM": 116, "ENXOFRE": 116, "SAPROPELITO": 126, "TURFA": 126,
}


def sigmine_titles():
    import pyogrio

    path = shared_path("occurrences", "sigmine_amapa_2021.gpkg")
    return pyogrio.read_dataframe(path, layer="sigmine_AP_2021_centroids", read_geometry=False)


def test_real_sigmine_substances_resolve_to_table_3_unless_listed():
    table = tables.load_class_id_table()
    subs = sorted(set(sigmine_titles().SUBS))
    assert len(subs) > 40
    specific = {entry["code"] for entry in table.codes if entry["substance"] is not None}
    for name in subs:
        substance = table.substance_of(name)
        if name in NOT_A_MINING_SUBSTANCE:
            assert substance is None, name
        elif name in GROUP_ONLY:
            assert table.code_for("industrial", substance) == GROUP_ONLY[name], name
        else:
            assert table.code_for("industrial", substance) in specific, name


def test_real_sigmine_mining_titles_fall_to_301_only_without_a_table_3_substance():
    table = tables.load_class_id_table()
    frame = sigmine_titles()
    fallen = set()
    for fase, subs in zip(frame.FASE, frame.SUBS):
        mining_type = table.type_of("FASE", fase)
        if mining_type is None:
            continue  # research permits and requests: not mines
        code = table.code_for(mining_type, table.substance_of(subs))
        if code in (None, table.unidentified):
            fallen.add((fase, subs))
    # Garimpo tantalite: tantalum has no Table 3 code and garimpo has no metallic group code.
    assert fallen == {("CONCESSÃO DE LAVRA", "ÁGUA MINERAL"), ("LAVRA GARIMPEIRA", "TANTALITA")}


def test_prevalence_table_matches_table_5():
    rows = read_csv("prevalence_table5.csv")
    assert len(rows) == 25
    ranks = tables.load_prevalence_table()
    assert list(ranks.items()) == [(int(row["pixel_value"]), int(row["prevalence"])) for row in rows]
