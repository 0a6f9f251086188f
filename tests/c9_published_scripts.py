"""The published MapBiomas Collection 9 mining post-classification scripts, transcribed line by line.

Source: github.com/mapbiomas/brazil-mining at commit 5a05cecc8295e6161d6eb7383cbac2224e62798b,
files ``Mapbiomas09/4-GapFill_TemporalFilter.js`` (gap fill and temporal filter, v4),
``Mapbiomas09/5-SpatialFilter.js`` (majority filter of small blobs) and
``Mapbiomas09/6-FrequencyFilter.js`` (pixel frequency filter).

The scripts' class values are kept: 0 not mining, 30 mining (MN), 50 not observed (NO); ``mask`` is -1
and never occurs in a byte image. Each Earth Engine image is a numpy array (one year, rows × cols)
wrapped in `Img`, which carries the few ee.Image operations the scripts use with their Earth Engine
semantics (a mask per pixel; ``where`` leaves masked input pixels alone and ignores masked test or value
pixels). The hard-coded years of the scripts (``firstYear`` 1985 … ``lastYear`` 2019, and the
frequency script's ``divide(34)``) become the length n of the series given, ``34`` being n − 1.

What is not transcribed: asset loading and remapping (``loadData``: the model's 1/2 classes remapped to
0/30, not-observed 50 where the mosaic's first band is 0 — the caller passes that stack), map layers
and exports, the frequency script's hand-drawn ``remove`` polygons (a manual edit of a few places in
Minas Gerais) and rule 7 (``tfLastYearMGFirstTwoAGNVF``), which only acts on class 5 and is kept as a
literal no-op. ``filterFirtsYears`` is commented out in the script and so is not called here either.
"""
from __future__ import annotations

from collections import deque

import numpy as np

MN = 30
NO = 50
MG = 5
NV = 10
AG = 33
mask = -1


class Img:
    """An ee.Image stand-in: integer values and a validity mask of the same shape."""

    def __init__(self, value, valid=None):
        self.value = np.asarray(value)
        self.valid = np.ones(self.value.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)

    def _other(self, other):
        return other if isinstance(other, Img) else Img(np.full(self.value.shape, other))

    def eq(self, other):
        other = self._other(other)
        return Img(self.value == other.value, self.valid & other.valid)

    def neq(self, other):
        other = self._other(other)
        return Img(self.value != other.value, self.valid & other.valid)

    def lt(self, other):
        other = self._other(other)
        return Img(self.value < other.value, self.valid & other.valid)

    def lte(self, other):
        other = self._other(other)
        return Img(self.value <= other.value, self.valid & other.valid)

    def And(self, other):  # ee.Image.and
        other = self._other(other)
        return Img((self.value != 0) & (other.value != 0), self.valid & other.valid)

    def where(self, test, value):
        """ee.Image.where: value where test is non-zero; masked input, test or value → input unchanged."""
        value = self._other(value)
        take = self.valid & test.valid & value.valid & (test.value != 0)
        return Img(np.where(take, value.value, self.value), self.valid)

    def mask(self, other):
        """ee.Image.mask(image) sets the mask; the scripts only call it on fully valid images, where
        setting and updating the mask are the same."""
        return self.updateMask(other)

    def updateMask(self, other):
        other = self._other(other)
        return Img(self.value, self.valid & other.valid & (other.value != 0))

    def unmask(self, fill):
        return Img(np.where(self.valid, self.value, fill), None)

    def connectedPixelCount(self, maxSize, eightConnected):
        """Size of each unmasked non-zero pixel's connected group, capped at maxSize (breadth-first search)."""
        rows, cols = self.value.shape
        on = self.valid & (self.value != 0)
        count = np.zeros((rows, cols), dtype=np.int64)
        seen = np.zeros((rows, cols), dtype=bool)
        steps = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0) and (eightConnected or a == 0 or b == 0)]
        for r in range(rows):
            for c in range(cols):
                if not on[r, c] or seen[r, c]:
                    continue
                members, queue = [], deque([(r, c)])
                seen[r, c] = True
                while queue:
                    i, j = queue.popleft()
                    members.append((i, j))
                    for a, b in steps:
                        p, q = i + a, j + b
                        if 0 <= p < rows and 0 <= q < cols and on[p, q] and not seen[p, q]:
                            seen[p, q] = True
                            queue.append((p, q))
                for i, j in members:
                    count[i, j] = min(len(members), maxSize)
        return Img(count, on)

    def neighborhoodToBands_square1_mode(self):
        """``neighborhoodToBands(ee.Kernel.square(1))`` then ``reduce(ee.Reducer.mode())``.

        The mode of the 3 × 3 neighbourhood (the pixel included); bands beyond the image's edge are
        masked and do not count; ties go to the smaller value (DESIGN.md §3).
        """
        rows, cols = self.value.shape
        out = np.zeros((rows, cols), dtype=np.int64)
        for r in range(rows):
            for c in range(cols):
                votes: dict[int, int] = {}
                for i in range(r - 1, r + 2):
                    for j in range(c - 1, c + 2):
                        if 0 <= i < rows and 0 <= j < cols and self.valid[i, j]:
                            votes[int(self.value[i, j])] = votes.get(int(self.value[i, j]), 0) + 1
                out[r, c] = min(votes, key=lambda v: (-votes[v], v))
        return Img(out, self.valid)


def NO_image(shape):
    """``ee.Image(NO)``."""
    return Img(np.full(shape, NO))


# ------------------------------------------------------------------ 4-GapFill_TemporalFilter.js
# rule 2
def tfNOCenterYear(im1, im2, im3):
    im2 = im2.where(im2.eq(NO).And(im1.neq(NO)).And(im1.neq(mask)), im1)
    return im2.where(im2.eq(NO).And(im1.eq(NO)).And(im3.neq(NO)).And(im3.neq(mask)), im3)


# rule 3
def tfNOLastYear(im1, im2, im3):
    im3 = im3.where(im3.eq(NO).And(im2.neq(NO)).And(im2.neq(mask)), im2)
    return im3.where(im3.eq(NO).And(im2.eq(NO)).And(im1.neq(NO)).And(im1.neq(mask)), im1)


# rule 5
def tfCenterYearFirstAndLastMatch(im1, im2, im3):
    return im2.where(im1.eq(im3).And(im1.neq(mask)), im1)


# rule 6
def tfLastYearFirstTwoMatch(im1, im2, im3):
    return im3.where(im1.eq(im2).And(im1.neq(mask)), im1)


# rule 7
def tfLastYearMGFirstTwoAGNVF(im1, im2, im3):
    im3 = im3.where(im3.eq(MG).And(im2.eq(NV)).And(im1.eq(AG)).And(im2.neq(mask)), im2)
    return im3.where(im3.eq(MG).And(im2.eq(AG)).And(im1.eq(NV)).And(im2.neq(mask)), im2)


def fillGaps(imageList, classValue=MN):
    limit = len(imageList) - 1  # lastYear - firstYear
    i = 0
    while i < limit:
        maskFiller = NO_image(imageList[i].value.shape).mask(imageList[i].eq(NO))
        if i < 32:
            j = i
            while j < i + limit and j < limit:
                maskFiller = maskFiller.where(maskFiller.eq(NO).And(imageList[j].neq(NO)), imageList[j])
                j = j + 1
        else:
            j = i
            while j < i + limit and j < limit:
                maskFiller = maskFiller.where(maskFiller.eq(NO).And(imageList[j].neq(NO)), imageList[j])
                j = j + 1
            maskFiller = maskFiller.where(maskFiller.eq(NO).And(imageList[i - 1].neq(NO)), imageList[i - 1])
            maskFiller = maskFiller.where(maskFiller.eq(NO).And(imageList[i - 2].neq(NO)), imageList[i - 2])
            maskFiller = maskFiller.where(maskFiller.eq(NO).And(imageList[i - 3].neq(NO)), imageList[i - 3])
        imageList[i] = imageList[i].where(imageList[i].eq(NO), maskFiller.unmask(NO))
        i = i + 1
    return imageList


def filterCenterYears(maps):
    n = len(maps)  # (lastYear - firstYear) + 1
    backup = [maps[i] for i in range(n)]
    for control in range(1, 4):
        i = control
        year = control  # firstYear + control, counted from firstYear
        while year < n - 1:  # year < lastYear
            maps[i] = tfNOCenterYear(backup[i - 1], backup[i], backup[i + 1])
            maps[i] = tfCenterYearFirstAndLastMatch(backup[i - 1], maps[i], backup[i + 1])
            i = i + 3
            year = year + 2
            year = year + 1  # the for loop's year++
    return maps


def filterLastYears(maps):
    n = len(maps)
    backup = [maps[i] for i in range(n)]
    for control in range(1, 4):
        i = control
        year = control
        while year < n - 1:
            maps[i + 1] = tfNOLastYear(backup[i - 1], backup[i], backup[i + 1])
            maps[i + 1] = tfLastYearFirstTwoMatch(backup[i - 1], backup[i], maps[i + 1])
            maps[i + 1] = tfLastYearMGFirstTwoAGNVF(backup[i - 1], backup[i], maps[i + 1])
            i = i + 3
            year = year + 2
            year = year + 1
    return maps


def temporal_filters(maps: list[np.ndarray]) -> list[np.ndarray]:
    """``filterCenterYears`` then ``filterLastYears`` (``filterFirtsYears`` is commented out) on 0/30/50 images."""
    maps = [Img(m) for m in maps]
    maps = filterCenterYears(maps)
    # maps = filterFirtsYears(maps);  (commented out in the script)
    maps = filterLastYears(maps)
    maps = [m.updateMask(m.neq(mask)) for m in maps]
    return [m.value for m in maps]


def gap_fill_temporal(maps: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The script's run: ``fillGaps`` then the temporal filters, on one 0/30/50 image per year.

    Returns (after fillGaps, after both temporal filters).
    """
    filled = [m.value for m in fillGaps([Img(m) for m in maps], MN)]
    return filled, temporal_filters(filled)


# ------------------------------------------------------------------ 5-SpatialFilter.js
def majorityFilter(image, params):
    maxSize = params["maxSize"]
    classValue = params["classValue"]

    classMask = image.eq(classValue)
    labeled = classMask.mask(classMask).connectedPixelCount(maxSize, True)

    region = labeled.lt(maxSize)

    # kernel = ee.Kernel.square(1); neighs = image.neighborhoodToBands(kernel).mask(region)
    # majority = neighs.reduce(ee.Reducer.mode())
    majority = image.neighborhoodToBands_square1_mode().mask(region)
    filtered = image.where(region, majority)
    return filtered


def spatialFilter(image: np.ndarray, filterParams) -> np.ndarray:
    """``new PostClassification(image).spatialFilter(filterParams)``: majorityFilter per entry, in order."""
    image = Img(image)
    for params in filterParams:
        image = majorityFilter(image, params)
    return image.value


# The committed parameters, and the class the script's own preview line inspects.
COMMITTED_FILTER_PARAMS = [{"classValue": 10, "maxSize": 10}]
MINING_FILTER_PARAMS = [{"classValue": 30, "maxSize": 10}]


# ------------------------------------------------------------------ 6-FrequencyFilter.js
def filterPixelFrequency(imc: list[np.ndarray], cutPercentage, classID) -> list[np.ndarray]:
    """The frequency filter, then the main code's per-year ``.mosaic().unmask(0)`` (0 / classID images).

    Needs at least 2 years (the script divides by n − 1).
    """
    n = len(imc)
    total = np.zeros(imc[0].shape, dtype=np.int64)
    for e in imc:
        total = total + (e == classID)
    imcFreq = Img(total / (n - 1) * 100)  # .sum().divide(34).multiply(100), for n ≥ 2 years
    filteredImages = []
    for e in imc:
        image = Img(e)
        image = image.updateMask(image.eq(classID)).where(imcFreq.lte(cutPercentage), 0)  # MAGIC! happening here
        filteredImages.append(image.unmask(0).value)
    return filteredImages
