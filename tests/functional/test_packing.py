"""Packing of ternary codes into bytes (neurobit.functional.packing): exact round trips,
byte counts ceil(n / 4) (2bit) and ceil(n / 5) (trit5), documented bit layouts, bad input."""
import math

import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.functional.packing import (pack_2bit, pack_trit5, packed_nbytes, unpack_2bit,
                                         unpack_trit5)
from neurobit.modules import BitLinear

SHAPES = [(1,), (5,), (7,), (13, 11), (3, 5, 7), (0,), (4,), (10,), (2, 0, 3)]
FORMATS = {"2bit": (pack_2bit, unpack_2bit, 4), "trit5": (pack_trit5, unpack_trit5, 5)}


def random_codes(shape, gen):
    return torch.randint(-1, 2, shape, generator=gen).float()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_and_byte_count(fmt, shape, gen):
    pack, unpack, per = FORMATS[fmt]
    codes = random_codes(shape, gen)
    packed = pack(codes)
    n = math.prod(shape)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(n / per) == packed_nbytes(n, fmt)
    back = unpack(packed, shape)
    assert back.shape == shape and back.dtype == torch.float32
    assert torch.equal(back, codes)
    assert torch.equal(unpack(packed, shape, torch.float64), codes.double())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_all_code_patterns(fmt):
    """Every combination of `per` codes (81 for 2bit, 243 for trit5) survives the round trip."""
    pack, unpack, per = FORMATS[fmt]
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0])] * per)  # [3^per, per]
    packed = pack(grid)
    assert packed.numel() == 3 ** per
    assert len(set(packed.tolist())) == 3 ** per  # injective
    assert torch.equal(unpack(packed, tuple(grid.shape)), grid)


def test_documented_layouts():
    # 2bit: code c + 1 at bit offset 2 (i % 4): [-1, 0, 1, 1] -> 0 | 1<<2 | 2<<4 | 2<<6 = 164
    assert pack_2bit(torch.tensor([-1.0, 0.0, 1.0, 1.0])).tolist() == [164]
    # trit5: sum (c_k + 1) 3^k: [-1, 0, 1, 1, -1] -> 0 + 3 + 18 + 54 + 0 = 75
    assert pack_trit5(torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0])).tolist() == [75]
    # padding is code 0 (value 1 in 2bit per slot, 1 per trit)
    assert pack_2bit(torch.tensor([1.0])).tolist() == [2 | 1 << 2 | 1 << 4 | 1 << 6]
    assert pack_trit5(torch.tensor([1.0])).tolist() == [2 + 3 + 9 + 27 + 81]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("bad", [[0.0, 2.0], [0.5], [-2.0, 1.0], [float("nan")]])
def test_invalid_codes_raise(fmt, bad):
    pack = FORMATS[fmt][0]
    with pytest.raises(ParameterError, match="^codes:"):
        pack(torch.tensor(bad))


def test_invalid_packed_bytes_raise():
    with pytest.raises(ParameterError, match="^packed:"):
        unpack_2bit(torch.tensor([0b11], dtype=torch.uint8), (1,))  # code 3 in slot 0
    with pytest.raises(ParameterError, match="^packed:"):
        unpack_trit5(torch.tensor([243], dtype=torch.uint8), (5,))
    with pytest.raises(ParameterError, match="^packed:"):
        unpack_2bit(torch.zeros(2, dtype=torch.uint8), (13,))  # 13 codes need 4 bytes
    with pytest.raises(ParameterError, match="^packed:"):
        unpack_trit5(torch.zeros(2, dtype=torch.uint8), (11,))  # 11 codes need 3 bytes
    with pytest.raises(ParameterError, match="^fmt:"):
        packed_nbytes(10, "3bit")


@pytest.mark.parametrize("fmt", ["2bit", "trit5"])
@pytest.mark.parametrize("quant,kw", [("absmean", {}), ("threshold", {"tau": 0.05}),
                                      ("fixed", {"fixed_scale": 0.02})])
@pytest.mark.parametrize("banks", [None, 3])
def test_bitlinear_export_round_trip(fmt, quant, kw, banks, gen):
    bl = BitLinear(13, 7, bias=True, quant=quant, banks=banks, **kw)
    with torch.no_grad():
        bl.weight.normal_(0, 0.1, generator=gen)
        bl.bias.normal_(generator=gen)
    out = bl.export_packed(fmt)
    shape = tuple(out["shape"].tolist())
    assert shape == tuple(bl.weight.shape)
    assert out["codes"].dtype == torch.uint8
    assert out["codes"].numel() == packed_nbytes(math.prod(shape), fmt)
    unpack = FORMATS[fmt][1]
    w = unpack(out["codes"], shape) * out["scale"]
    assert torch.equal(w, bl.effective_weight())
    assert torch.equal(out["bias"], bl.bias.detach())
    assert out["codes"].numel() * 8 <= 2 * math.prod(shape) + 8  # at most 2 bits per weight


def test_bitlinear_export_errors():
    with pytest.raises(ParameterError, match="^fmt:"):
        BitLinear(4, 3).export_packed("4bit")
    with pytest.raises(ParameterError, match="^quant:"):
        BitLinear(4, 3, quant="float").export_packed()
