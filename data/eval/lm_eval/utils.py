"""lm-eval ``process_docs`` hooks of the course's tasks: one language of data/eval/multiple_choice.jsonl."""


def english(dataset):
    return dataset.filter(lambda doc: doc["lang"] == "en")


def chinese(dataset):
    return dataset.filter(lambda doc: doc["lang"] == "zh")
