"""How config.json here was made: upstream speculators 0.9.0's own Eagle3Converter config step, run on the
SafeAILab EAGLE-3 Llama-3.1-8B draft config (config only: no 8B weights needed). Run with the gate venv's
python from a folder holding eagle3.json (../safeailab-eagle3-llama3.1-8b/config.json) and
meta-llama/Llama-3.1-8B-Instruct/config.json (../verifiers/llama-3.1-8b-instruct/config.json):

    python regenerate.py eagle3.json meta-llama/Llama-3.1-8B-Instruct out
"""
import json, sys
from importlib.metadata import version
from speculators.convert.eagle.eagle3_converter import Eagle3Converter

source, verifier, out = sys.argv[1:4]
eagle_config = json.load(open(source))
eagle_config["target_vocab_size"] = 128256  # what convert() reads off the t2d tensor's shape
config = Eagle3Converter()._build_eagle3_speculator_config(eagle_config, verifier)
config.save_pretrained(out)
print(version("speculators"), version("transformers"))
