"""Label Studio's side of the wire: its API, its labelling configs, and the result format it imports.

It knows nothing of how the backend serves or trains: it imports only the backend's foundation
(:mod:`backend.exceptions`, :mod:`backend.redact`) and ``training``'s brush RLE decoder, and both the serving path and
:mod:`backend.finetune` build on it (``tests/test_architecture.py`` checks this direction). Modules:

    client            the Label Studio API client: auth, export, predictions, exactly-once import
    labeling_config   what the backend needs from a labelling config, with an error naming what is missing
    label_words       the label for a text: its head noun, and a small word list of common nouns per typical label name
    results           brush RLE and polygon regions from masks; prediction records for import
"""
