"""Trainer of the demo pair in `lossgap/demo_models`: `python -m tools.train_demo --out src/lossgap/demo_models`.

data: corpus, tokenizer, chat data and rows; train: model, optimizer and loops; evaluate: held-out and chat
numbers from the saved weights; __main__: the driver that runs them in order and writes each training_log.json.
"""
