"""The FDOPA benchmark census: composition counted from truth rows, design minimums named."""

from __future__ import annotations

from service.sim.fdopa.benchmark import census, census_shortfalls


def _row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"tumour_class": "hgg", "paediatric": False, "schedule": "",
                               "flair": "", "enhanced_pet": False, "measurable": True,
                               "cpu_s": 4.0}
    base.update(kw)
    return base


def test_census_counts_each_property_from_json_and_csv_values() -> None:
    rows = [
        _row(paediatric=True, schedule="genoa25", flair="ax2d_3t", tumour_class="dmg"),
        _row(schedule="eanm_30", cpu_s=25.0),
        # manifest.csv gives strings: "False" and "" must count as absent
        _row(paediatric="False", flair="", enhanced_pet="True", measurable="False",
             tumour_class="none", cpu_s="7.0"),
    ]
    c = census(rows)
    assert (c["studies"], c["paediatric"], c["dynamic"], c["flair"]) == (3, 1, 2, 1)
    assert (c["enhanced_pet"], c["measurable"]) == (1, 2)
    assert c["classes"] == {"dmg": 1, "hgg": 1, "none": 1}
    assert c["cpu_s_total"] == 36.0 and c["cpu_s_mean"] == 12.0


def test_shortfalls_name_every_missed_minimum() -> None:
    small = census([_row(schedule="x", flair="y")] * 10)
    assert census_shortfalls(small) == ["studies: 10 < 600", "dynamic: 10 < 200", "flair: 10 < 200"]
    big = census([_row(schedule="x", flair="y")] * 600)
    assert census_shortfalls(big) == []
    assert census([])["cpu_s_mean"] is None
