"""Loaders in medgpt_utils.data: every accepted format (fixtures/good), and every kind of bad input.

Each bad kind is tested twice: on_error="raise" (DataFormatError naming file, line and problem)
and on_error="skip" (the bad record is skipped and counted; the good ones around it are kept).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medgpt_utils.data import DataFormatError, load_preference, load_pretraining, load_prompts, load_sft

GOOD = Path(__file__).parent / "fixtures" / "good"
LOADERS = {"sft": load_sft, "preference": load_preference, "pretrain": load_pretraining, "prompts": load_prompts}


def S(content):
    return {"role": "system", "content": content}


def U(content):
    return {"role": "user", "content": content}


def A(content):
    return {"role": "assistant", "content": content}


def pref(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "chosen": [A(chosen)], "rejected": [A(rejected)], **extra}


# ------------------------------------------------------------------ good fixtures, row for row
EXPECTED = {
    "sft/alpaca.json": [
        {"messages": [U("高血压患者每天应该吃多少盐？"), A("建议每天食盐不超过5克。")]},
        {"messages": [S("You are a careful medical assistant."), U("Is this fasting glucose normal?\n5.4 mmol/L, adult"),
                      A("Yes, 3.9-6.1 mmol/L is the normal fasting range.")]},
        {"messages": [U("我的血压是150/95，严重吗？"), A("这属于1级高血压，建议就诊复查。"),
                      U("那需要吃药吗？"), A("先改善生活方式，是否用药请遵医嘱。")]},
    ],
    "sft/alpaca.jsonl": [  # "lang" is an extra column, kept; the record without it gets None
        {"messages": [U("What is a normal resting heart rate?"), A("60 to 100 beats per minute.")], "lang": "en"},
        {"messages": [S("你是一名谨慎的医生。"), U("感冒了可以吃抗生素吗？\n没有细菌感染的证据"), A("不需要，抗生素对病毒无效。")],
         "lang": "zh"},
        {"messages": [U("What is a normal resting heart rate?"), A("60 to 100 beats per minute."),
                      U("And for athletes?"), A("It can be as low as 40 beats per minute.")], "lang": None},
    ],
    "sft/messages.jsonl": [
        {"messages": [S("You are a pharmacist."), U("Can I take ibuprofen with food?"),
                      A("Yes, taking it with food protects the stomach.")]},
        {"messages": [U("糖尿病的典型症状是什么？"), A("多饮、多尿、多食和体重下降。"), U("需要查什么？"), A("空腹血糖和糖化血红蛋白。")]},
    ],
    "sft/sharegpt.jsonl": [  # human/gpt/system, then user/assistant
        {"messages": [S("你是一名全科医生。"), U("头痛三天了怎么办？"), A("注意休息，若加重或伴发热请就医。")]},
        {"messages": [U("What causes anemia?"), A("Often iron deficiency or blood loss."),
                      U("Which test confirms it?"), A("A complete blood count.")]},
        {"messages": [U("Is a fever of 38 °C dangerous?"), A("Usually not; rest and drink fluids.")]},
    ],
    "preference/medicalgpt.jsonl": [
        pref([U("胸痛伴出汗该怎么办？")], "立即拨打120，这可能是心梗。", "躺下休息一会儿就好。", rejected_kind="unsafe"),
        pref([S("You are a cautious doctor."), U("I have a mild cold."), A("Rest and drink fluids."), U("Do I need antibiotics?")],
             "No, antibiotics do not treat viral colds.", "Yes, take amoxicillin.", rejected_kind="wrong_fact"),
        pref([U("How much water should I drink daily?")], "About 1.5 to 2 litres for most adults.", "Water is not important.",
             rejected_kind=None),
    ],
    "preference/question_response.jsonl": [  # "system": "" and "history": [] mean none
        pref([U("儿童发烧可以用阿司匹林吗？")], "不可以，儿童应避免使用阿司匹林。", "可以，按成人剂量减半即可。"),
        pref([S("You are a careful medical assistant."), U("I was bitten by a dog."), A("Wash the wound with soap and water."),
              U("Do I need a rabies vaccine?")],
             "Yes, see a doctor today for rabies prophylaxis.", "No, small bites never need it."),
    ],
    "preference/trl_messages.jsonl": [
        pref([S("你是一名儿科医生。"), U("宝宝腹泻要注意什么？")], "及时补液，防止脱水。", "马上停止喂奶。"),
        pref([U("Can I stop my blood pressure pills when I feel fine?")],
             "No, keep taking them unless your doctor says otherwise.", "Yes, stop once you feel better."),
    ],
    "preference/trl_strings.jsonl": [
        pref([U("What is a healthy BMI?")], "18.5 to 24.9 for most adults.", "Any BMI is healthy."),
        pref([U("孕妇能喝咖啡吗？")], "可以少量，每天咖啡因不超过200毫克。", "完全没有限制。"),
    ],
    "pretrain/docs.jsonl": [
        {"text": "Asthma is a chronic inflammatory disease of the airways.", "source": "textbook"},
        {"text": "糖尿病是一组以高血糖为特征的代谢性疾病。", "source": None},
    ],
    "pretrain/docs.txt": [  # the blank line is not a document
        {"text": "高血压是以体循环动脉血压增高为主要特征的临床综合征。"},
        {"text": "Influenza is an acute respiratory infection caused by influenza viruses."},
        {"text": "Anemia means too few red blood cells or too little haemoglobin."},
    ],
    "prompts/prompts.jsonl": [
        {"prompt": [U("What are the warning signs of a stroke?")], "lang": "en"},
        {"prompt": [S("你是一名急诊科医生。"), U("被烫伤后第一步做什么？")], "lang": "zh"},
        {"prompt": [U("My knee hurts."), A("Since when?"), U("Two days, after running.")], "lang": None},
    ],
    "prompts/prompts.txt": [
        {"prompt": [U("How is tuberculosis spread?")]},
        {"prompt": [U("哮喘发作时应该怎么办？")]},
    ],
}


def test_every_good_fixture_is_covered():
    assert sorted(EXPECTED) == sorted(p.relative_to(GOOD).as_posix() for p in GOOD.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_good_fixture_loads_exactly(name):
    loader = LOADERS[name.split("/")[0]]
    dataset, report = loader(GOOD / name, return_report=True)
    assert dataset.to_list() == EXPECTED[name]
    assert report.files == [str(GOOD / name)]
    assert (report.read, report.kept, report.skipped_total, report.errors) == (len(EXPECTED[name]), len(EXPECTED[name]), 0, [])


@pytest.mark.parametrize("folder", sorted(LOADERS))
def test_folder_loads_all_files_in_sorted_order(folder):
    dataset, report = LOADERS[folder](GOOD / folder, return_report=True)
    names = sorted(name for name in EXPECTED if name.startswith(folder + "/"))
    assert len(names) >= 2
    assert report.files == [str(GOOD / name) for name in names]
    rows = [row for name in names for row in EXPECTED[name]]
    columns = {key for row in rows for key in row}  # columns missing in some files are filled with None
    assert dataset.to_list() == [{key: row.get(key) for key in columns} for row in rows]
    assert report.read == report.kept == len(rows)


def test_folder_fills_missing_columns_with_none():
    dataset = load_preference(GOOD / "preference")
    assert dataset.column_names == ["prompt", "chosen", "rejected", "rejected_kind"]
    assert dataset["rejected_kind"] == ["unsafe", "wrong_fact", None] + [None] * 6


def test_list_of_paths_keeps_the_given_order():
    paths = [GOOD / "pretrain/docs.txt", GOOD / "pretrain/docs.jsonl"]
    rows = EXPECTED["pretrain/docs.txt"] + EXPECTED["pretrain/docs.jsonl"]
    assert load_pretraining(paths).to_list() == [{"text": r["text"], "source": r.get("source")} for r in rows]


# ------------------------------------------------------------------ bad records: raise and skip
# Two good records per loader; each bad file puts a bad record between them (or after the first).
GOOD_LINES = {
    load_sft: ['{"instruction": "发烧38.5度怎么办？", "output": "多喝水、休息，必要时服用退烧药。"}',
               '{"messages": [{"role": "user", "content": "What is a normal heart rate?"}, '
               '{"role": "assistant", "content": "60 to 100 beats per minute."}]}'],
    load_preference: ['{"prompt": "Is aspirin safe for children?", "chosen": "No, avoid it in children.", "rejected": "Yes."}',
                      '{"conversations": [{"from": "human", "value": "咳嗽两周了怎么办？"}], "chosen": "请就医排查原因。", "rejected": "不用管。"}'],
    load_prompts: ['{"prompt": "How is measles spread?"}', '{"prompt": [{"role": "user", "content": "如何预防流感？"}]}'],
    load_pretraining: ['{"text": "Hypertension is high blood pressure."}', '{"text": "肺炎是肺部的感染。"}'],
}
GOOD_ROWS = {
    load_sft: [{"messages": [U("发烧38.5度怎么办？"), A("多喝水、休息，必要时服用退烧药。")]},
               {"messages": [U("What is a normal heart rate?"), A("60 to 100 beats per minute.")]}],
    load_preference: [pref([U("Is aspirin safe for children?")], "No, avoid it in children.", "Yes."),
                      pref([U("咳嗽两周了怎么办？")], "请就医排查原因。", "不用管。")],
    load_prompts: [{"prompt": [U("How is measles spread?")]}, {"prompt": [U("如何预防流感？")]}],
    load_pretraining: [{"text": "Hypertension is high blood pressure."}, {"text": "肺炎是肺部的感染。"}],
}


def jsonl(loader, bad):
    """A .jsonl file: good record, ``bad`` on line 2, good record."""
    first, second = GOOD_LINES[loader]
    return "data.jsonl", [first, bad, second]


def write(directory: Path, name: str, lines: list) -> Path:
    path = directory / name
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines) + b"\n")
    return path


def msgs(*roles):
    return ", ".join(f'{{"role": "{r}", "content": "{r}: 头晕"}}' for r in roles)


def sharegpt(*froms):
    return ", ".join(f'{{"from": "{f}", "value": "{f}: 头晕"}}' for f in froms)


# (loader, (file name, lines), bad line, problem text(s), skip reason, good records kept)
BAD = [
    pytest.param(load_sft, jsonl(load_sft, '{"instruction": "咳嗽怎么办", "output": "多喝水"'), 2,
                 "broken JSON: Expecting ',' delimiter (column 41)", "broken JSON", 2, id="broken-json-line"),
    # In a .json list a broken record costs only itself: the records after it are read.
    pytest.param(load_sft, ("data.json", ["[", f"  {GOOD_LINES[load_sft][0]},", '  {"instruction": "咳嗽怎么办", "output": },',
                                          f"  {GOOD_LINES[load_sft][1]}", "]"]), 3,
                 "broken JSON: Expecting value (column 38)", "broken JSON", 2, id="broken-record-in-json-list"),
    pytest.param(load_sft, jsonl(load_sft, '{"instruction": "头晕是什么原因？", "input": ""}'), 2,
                 "missing field 'output'", "missing field 'output'", 2, id="missing-field-alpaca-output"),
    pytest.param(load_preference, jsonl(load_preference, '{"question": "头晕怎么办？", "response_chosen": "就医。"}'), 2,
                 "missing field 'response_rejected'", "missing field 'response_rejected'", 2, id="missing-field-preference"),
    pytest.param(load_pretraining, jsonl(load_pretraining, '{"content": "Asthma narrows the airways."}'), 2,
                 "missing field 'text'", "missing field 'text'", 2, id="missing-field-text"),
    pytest.param(load_sft, jsonl(load_sft, '{"instruction": "头晕是什么原因？", "output": ""}'), 2,
                 "empty field 'output'", "empty field 'output'", 2, id="empty-field-output"),
    pytest.param(load_prompts, jsonl(load_prompts, '{"prompt": "   "}'), 2,
                 "empty field 'prompt'", "empty field 'prompt'", 2, id="empty-field-prompt"),
    pytest.param(load_preference, jsonl(load_preference, '{"prompt": "Is sugar bad?", "chosen": "In excess, yes.", "rejected": ""}'),
                 2, "empty field 'rejected'", "empty field 'rejected'", 2, id="empty-field-rejected"),
    pytest.param(load_sft, jsonl(load_sft, f'{{"conversations": [{sharegpt("human", "bot")}]}}'), 2,
                 "unknown role 'bot' in conversations[1].from (accepted: human, user, gpt, assistant, system)",
                 "unknown role 'bot' in conversations[1].from", 2, id="unknown-role-bot"),
    pytest.param(load_sft, jsonl(load_sft, f'{{"messages": [{msgs("assistant", "user", "assistant")}]}}'), 2,
                 "turns out of order: messages[0] is assistant, expected user", "turns out of order", 2, id="assistant-first"),
    pytest.param(load_sft, jsonl(load_sft, f'{{"conversations": [{sharegpt("human", "human", "gpt")}]}}'), 2,
                 "turns out of order: conversations[1] is user, expected assistant", "turns out of order", 2, id="two-user-turns"),
    pytest.param(load_sft, jsonl(load_sft, f'{{"messages": [{msgs("user", "system", "assistant")}]}}'), 2,
                 "turns out of order: system message at messages[1] (only the first turn may be system)",
                 "turns out of order", 2, id="system-not-first"),
    pytest.param(load_sft, jsonl(load_sft, f'{{"conversations": [{sharegpt("human", "gpt", "human")}]}}'), 2,
                 ("turns out of order: 'conversations' must end with a", "ends with user"), "turns out of order", 2,
                 id="sft-ends-on-user"),
    pytest.param(load_preference, jsonl(load_preference, f'{{"prompt": [{msgs("user", "assistant")}], "chosen": "a", "rejected": "b"}}'),
                 2, ("turns out of order: 'prompt' must end with a user turn", "ends with assistant"), "turns out of order", 2,
                 id="preference-prompt-ends-on-assistant"),
    pytest.param(load_sft, jsonl(load_sft, b'{"instruction": "\xe5\xa4\xb4\xff", "output": "x"}'), 2,
                 "invalid UTF-8 (byte 0xff at offset 20)", "invalid UTF-8", 2, id="invalid-utf8-jsonl"),
    pytest.param(load_pretraining, ("data.txt", ["Hypertension is high blood pressure.", b"Bad \xc3\x28 byte", "肺炎是肺部的感染。"]), 2,
                 "invalid UTF-8 (byte 0xc3 at offset 4)", "invalid UTF-8", 2, id="invalid-utf8-txt"),
]
BAD_ARGS = "loader, file, line, problem, reason, kept"


@pytest.mark.parametrize(BAD_ARGS, BAD)
def test_bad_record_raises_naming_file_line_and_problem(tmp_path, loader, file, line, problem, reason, kept):
    path = write(tmp_path, *file)
    with pytest.raises(DataFormatError) as info:
        loader(path)
    err = info.value
    assert (err.path, err.line) == (str(path), line)
    assert str(err).startswith(f"{path}:{line}: ")
    for text in [problem] if isinstance(problem, str) else problem:
        assert text in str(err)


@pytest.mark.parametrize(BAD_ARGS, BAD)
def test_bad_record_is_skipped_and_counted(tmp_path, loader, file, line, problem, reason, kept):
    path = write(tmp_path, *file)
    dataset, report = loader(path, on_error="skip", return_report=True)
    assert dataset.to_list() == GOOD_ROWS[loader][:kept]
    assert report.skipped == Counter({reason: 1})
    assert report.kept == kept
    assert report.read == report.kept + report.skipped_total
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{path}:{line}: ")


def test_skip_counts_several_reasons_across_files(tmp_path):
    write(tmp_path, "a.jsonl", [GOOD_LINES[load_sft][0], "{oops", '{"instruction": "头晕", "output": ""}'])
    write(tmp_path, "b.jsonl", ["{oops", GOOD_LINES[load_sft][1]])
    write(tmp_path, "c.jsonl", [""])
    dataset, report = load_sft(tmp_path, on_error="skip", return_report=True)
    assert dataset.to_list() == GOOD_ROWS[load_sft]
    assert report.skipped == Counter({"broken JSON": 2, "empty field 'output'": 1, "file is empty": 1})
    assert (report.read, report.kept) == (6, 2)
    assert str(report) == ("3 file(s): read 6, kept 2, skipped 4 "
                           "(broken JSON: 2, empty field 'output': 1, file is empty: 1)")


def test_file_with_only_bad_records_raises_even_with_skip(tmp_path):
    path = write(tmp_path, "data.jsonl", ['{"instruction": "头晕"}', "{oops"])
    with pytest.raises(DataFormatError, match="missing field 'output'") as info:
        load_sft(path)
    assert info.value.line == 1
    with pytest.raises(ValueError, match="no usable records") as info:
        load_sft(path, on_error="skip")
    assert str(path) in str(info.value) and "read 2, kept 0, skipped 2" in str(info.value)


# ------------------------------------------------------------------ whole files and paths
@pytest.mark.parametrize("name, content", [("a.jsonl", ""), ("a.json", " \n"), ("a.txt", "\n\n  \n")])
def test_empty_file_is_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as info:
        load_pretraining(path)
    assert str(info.value) == f"{path}: file is empty"
    assert info.value.line is None
    with pytest.raises(ValueError, match="no usable records"):
        load_pretraining(path, on_error="skip")


def test_empty_json_list_is_a_clear_error(tmp_path):
    path = write(tmp_path, "a.json", ["", "[ ]"])
    with pytest.raises(DataFormatError, match="JSON list is empty") as info:
        load_sft(path)
    assert (info.value.path, info.value.line) == (str(path), 2)


def test_empty_file_is_skipped_next_to_good_ones(tmp_path):
    write(tmp_path, "a_empty.jsonl", [""])
    write(tmp_path, "b_good.jsonl", GOOD_LINES[load_prompts])
    dataset, report = load_prompts(tmp_path, on_error="skip", return_report=True)
    assert dataset.to_list() == GOOD_ROWS[load_prompts]
    assert report.skipped == Counter({"file is empty": 1})
    assert report.errors == [f"{tmp_path / 'a_empty.jsonl'}: file is empty"]


def test_folder_without_data_files_is_a_clear_error(tmp_path):
    (tmp_path / "README.md").write_text("# notes\n")
    with pytest.raises(DataFormatError, match=r"folder has no data files \(\.txt, \.json, \.jsonl, \.parquet\)") as info:
        load_sft(tmp_path)
    assert info.value.path == str(tmp_path)


def test_missing_path_is_a_clear_error(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataFormatError) as info:
        load_sft(path)
    assert str(info.value) == f"{path}: no such file or folder"


def test_unsupported_file_type_is_a_clear_error(tmp_path):
    path = write(tmp_path, "data.csv", ["instruction,output"])
    with pytest.raises(DataFormatError, match=r"unsupported file type '\.csv'"):
        load_sft(path)


@pytest.mark.parametrize("loader", [load_sft, load_preference])
def test_plain_text_is_only_for_pretraining_and_prompts(loader):
    with pytest.raises(DataFormatError, match="plain-text files are only accepted for pretraining text and prompts") as info:
        loader(GOOD / "prompts/prompts.txt")
    assert info.value.line == 1


def test_on_error_must_be_raise_or_skip():
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        load_sft(GOOD / "sft/messages.jsonl", on_error="ignore")


@pytest.mark.parametrize("name, lines", [("a.jsonl", GOOD_LINES[load_pretraining]),
                                         ("a.txt", ["Hypertension is high blood pressure.", "肺炎是肺部的感染。"])])
def test_utf8_bom_is_not_part_of_the_data(tmp_path, name, lines):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")  # as Windows editors save it
    assert load_pretraining(path).to_list() == GOOD_ROWS[load_pretraining]
