import torch

from torchvision.ops import generalized_box_iou_loss

from detector.boxes import DeltaCoder, DistanceCoder, batched_box_iou, paired_iou, point_box_distances


def test_paired_iou_of_half_overlapping_squares_is_one_seventh():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3]])
    assert torch.allclose(paired_iou(a, b), torch.tensor([1 / 7]))


def test_the_giou_loss_subtracts_the_empty_hull_fraction():
    """torchvision's loss, as the criterion uses it: 1 - GIoU."""
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3]])
    # IoU 1/7, hull 3x3 = 9, union 7: GIoU = 1/7 - 2/9
    assert torch.allclose(generalized_box_iou_loss(a, b), torch.tensor(1 - (1 / 7 - 2 / 9)), atol=1e-6)
    far = torch.tensor([[10.0, 10, 12, 12]])
    assert generalized_box_iou_loss(a, far).item() > 1


def test_point_box_distances_broadcast_every_point_against_every_box():
    points = torch.tensor([[5.0, 5.0], [1.0, 9.0]])  # (N=2, 2)
    boxes = torch.tensor([[[0.0, 0, 10, 10], [4.0, 2, 8, 6]]])  # (B=1, G=2, 4)
    d = point_box_distances(points[None, :, None], boxes[:, None])  # (1, 2, 2, 4)
    assert d.shape == (1, 2, 2, 4)
    assert d[0, 0, 1].tolist() == [1.0, 3.0, 3.0, 1.0]  # (5, 5) in [4, 2, 8, 6]
    assert d[0, 1, 0].tolist() == [1.0, 9.0, 9.0, 1.0]


def test_batched_box_iou_matches_torchvision_per_image():
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 5, 2, generator=g) * 50
    a = torch.cat((xy, xy + 1 + torch.rand(2, 5, 2, generator=g) * 30), -1)
    xy = torch.rand(2, 3, 2, generator=g) * 50
    b = torch.cat((xy, xy + 1 + torch.rand(2, 3, 2, generator=g) * 30), -1)
    got = batched_box_iou(a, b)
    for i in range(2):
        assert torch.allclose(got[i], box_iou(a[i], b[i]), atol=1e-6)


def test_delta_coder_round_trips():
    anchors = torch.tensor([[0.0, 0, 32, 32], [10, 20, 74, 52]])
    boxes = torch.tensor([[4.0, 2, 30, 40], [0, 0, 100, 60]])
    assert torch.allclose(DeltaCoder.decode(anchors, DeltaCoder.encode(anchors, boxes)), boxes, atol=1e-4)


def test_distance_coder_is_in_stride_units():
    pts = torch.tensor([[20.0, 20.0]])
    strides = torch.tensor([8.0])
    box = torch.tensor([[4.0, 12.0, 36.0, 28.0]])
    d = DistanceCoder.encode(pts, strides, box)
    assert torch.allclose(d, torch.tensor([[2.0, 1.0, 2.0, 1.0]]))
    assert torch.allclose(DistanceCoder.decode(pts, strides, d), box)
