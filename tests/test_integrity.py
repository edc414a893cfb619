def test_battery_smoke_a_few_cases_exit_2_with_one_line(tmp_path):
    from experiments import battery

    cases = [*battery.flag_cases()[:2], *battery.npz_cases(tmp_path)[5:7]]  # flags, bad CRC, …
    outcomes = [battery.run_case(c, tmp_path / f"case{i}") for i, c in enumerate(cases)]
    assert [o.kind for o in outcomes] == ["exit2"] * 4, outcomes
