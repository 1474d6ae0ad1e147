"""Short PGD runs pinned bit for bit: δ and every loss history of DANP (paper config, fast profile and each
cheaper knob) and two baselines, on both tiny editors.

The hashes are sha256 of the float32 tensors' bytes, recorded with the single-threaded CPU run of this suite
(conftest pins one torch thread). They pin the objective machinery (sampler, balancer, chunking, caches):
a refactor that changes any draw, any summation order or any step shows here. A different torch build or
CPU may round differently; then record the hashes again from the commit before the change under test
(``PYTHONPATH=tests python tests/protect/test_objective_regression.py`` prints them) and compare against that.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import AttackConfig, method_config, profile_config
from danp_pipeline.protect.baselines import build_objective
from danp_pipeline.protect.pgd import pgd

PROMPTS = ["put her in a prison cell", "make it snow", "turn it into a painting"]
BASE = AttackConfig(steps=4, num_timesteps=4, resolution=64)

#: case -> (method, config); every case runs on tiny-ip2p and tiny-sd.
CASES: dict[str, tuple[str, AttackConfig]] = {
    "paper": ("danp", BASE),
    "fast": ("danp", profile_config("fast", BASE.replace(steps=20))),     # 6 steps, balance_every=5, subset 2
    "balance_every": ("danp", BASE.replace(steps=5, balance_every=3)),
    "fixed_noise": ("danp", BASE.replace(noise="fixed")),
    "timestep_subset": ("danp", BASE.replace(timestep_subset=2)),
    "prompt_subset": ("danp", BASE.replace(prompt_subset=1, noise="fixed")),
    "pgd-e2e": ("pgd-e2e", method_config("pgd-e2e", BASE.replace(steps=2, num_timesteps=2, prompt_subset=2))),
    "mist": ("mist", method_config("mist", BASE.replace(num_timesteps=2, balance_every=2))),
}

#: (case, editor) -> (sha256 of δ, sha256 of the histories in name order)
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    ('paper', 'ip2p'): ('1e37602343d5f7c343065b63f2896d4486b289e7a105dbe47aa63de25b3127b6',
                        'f9934bf8605d6e5a6636a73081efc5fa25dbdbf7b1996f28c2e213b0fb6ae507'),
    ('fast', 'ip2p'): ('2e9185fad0665d2397e1d78c24c83a8be3bb9ed9bd0355d9d5d0e101764a9fa6',
                       '8777337fd4305cc280f9dee3669da7a3511b092ccd673a67cdf1151a04b8fa7b'),
    ('balance_every', 'ip2p'): ('2ec9cad62e6de245a3b05e286e0ac84fa443c95a7d6ac434a28b9a044fa58ed6',
                                'ed347f201b6e1c3c3b7ab68e88e08a5187102d2d55b45767a85e97b4d8bf394e'),
    ('fixed_noise', 'ip2p'): ('88f145702a8124816633e95b1b17ff8c5caf8cb9af6ce7166334acd9c1daac4c',
                              '606be1e028bb7f8a29845886aafebe00988fc1163c3ba22861ca4ff03d5ff0a8'),
    ('timestep_subset', 'ip2p'): ('c2763ad8285cb80c6eab546a8c5e509a6dcc00883eb65862c36f2edf8fcc28a3',
                                  '5d98606b269bb3fbd3b8fd6ebc5a23c74da54dd478f4d5aa7c2b10087e6f9812'),
    ('prompt_subset', 'ip2p'): ('5e1f786a7dd8b3fcf1ee4dd0cffd7ec65346e39c19a526780d95a6ccd76e6583',
                                '9bb836956ab94ae38cae4995ecf0434cb1dc56587c530384bd73c8e8f1b6ac09'),
    ('pgd-e2e', 'ip2p'): ('023c6c54d6195095566fbf93524fba24a98b619935e679fd3b40d4bea10de435',
                          'cbb03f717dfacb03622cfdf6cfc7e41def277db392f37fe84f86058f295c3e26'),
    ('mist', 'ip2p'): ('256dacbe5cd6ce037a15a450071bc2ea79a731050d580062c2e8b4e8b542b4ee',
                       '42f384fcc00682451d74c6a3cf904c895402e7d5e1da206a097ebd0c8d910a91'),
    ('paper', 'sd'): ('c4bfa8e3ca339bc09829b84220d38f85d79b08d64a457697e519608604b352b2',
                      '70049d31648fc972f6a9e446e8ecda8903f0f08579b0ead00eb7f612d2776062'),
    ('fast', 'sd'): ('b63fe2dd012423640372fdf228daa1e6904a0a7f796483e1f1884ea4529b4616',
                     'dd51f78244a9438547b56fb96d1077e27c958abc6e873960a08a564b7f05cbf9'),
    ('balance_every', 'sd'): ('c6ee365d8493e40f529cfad21d14c22e38e0cd4499407f89f1ba69a8dfef15b1',
                              '16a297a00e5e69b94f524357c3d3da29bbf7a2f3fb6131d3aaed61df6f6f6651'),
    ('fixed_noise', 'sd'): ('351afc58a0f8c867a3bbea8990edecaab4b560aedcd78b2470e38714f7978fbf',
                            'e2b2257bd32030efd2ae8bda0ae6f3b351f66fcae8aa0a46df35e8f49c892c54'),
    ('timestep_subset', 'sd'): ('3f07a209576c024478e7c1a799b0512344e3cffbc0ec34f7e65d32f6c75dd7e2',
                                '9733b5b14ddc7d2df67d8f342e22bb7fcb9846890e147715307c7be735a06602'),
    ('prompt_subset', 'sd'): ('0d903cc8a4729e39f090cba322adf640531eaa63535c398e508cea87e01bf96d',
                              'a4a9749d9a895664fcaefb7d52348ffb9c543188512932e157efe9d320b12855'),
    ('pgd-e2e', 'sd'): ('e6c9effdba7439218d12ef4061cc6ea20cf23b088f46767a39f4d02bf184c0e9',
                        '7bd79d1252eff283ab06628ad58bf5e7aa73b389567bf6e10f37c08cc15d0737'),
    ('mist', 'sd'): ('54b3fc03c976b1d25633b41fe6893ec66233c0aff40d38ea9eab13e98cf8835c',
                     '312bffb864b5dd47881aa73c3c827ae5a5b025c2c183fedb7a862517095a2810'),
}


def fingerprint(delta: torch.Tensor, history: dict[str, list[torch.Tensor]]) -> tuple[str, str]:
    h = hashlib.sha256()
    for name in sorted(history):
        h.update(name.encode())
        h.update(torch.stack(history[name]).float().contiguous().numpy().tobytes())
    return hashlib.sha256(delta.float().contiguous().numpy().tobytes()).hexdigest(), h.hexdigest()


def run(bundle, case: str):
    method, cfg = CASES[case]
    prompts = [PROMPTS] if case == "prompt_subset" or method == "pgd-e2e" else [PROMPTS[:1]]
    x0 = as_batch(photo("astronaut"))
    return pgd(x0, build_objective(method, bundle, cfg, prompts, [11], x0), cfg, seeds=[11])


@pytest.mark.parametrize("kind", ["ip2p", "sd"])
@pytest.mark.parametrize("case", list(CASES))
def test_short_pgd_runs_are_bit_identical_to_the_recorded_ones(request, case, kind):
    result = run(request.getfixturevalue(f"tiny_{kind}"), case)
    assert int(result.skipped.sum()) == 0
    assert fingerprint(result.delta, result.history) == EXPECTED[case, kind]


if __name__ == "__main__":
    from danp_pipeline.protect.models import load_editor

    torch.set_num_threads(1)
    for kind in ("ip2p", "sd"):
        bundle = load_editor(f"tiny-{kind}", device="cpu")
        for case in CASES:
            r = run(bundle, case)
            print(f"    ({case!r}, {kind!r}): {fingerprint(r.delta, r.history)!r},", flush=True)
