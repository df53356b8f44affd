"""What video and audio runs leave for people, and what people give them: GIFs and frame grids,
WAV files and waveform/spectrogram pictures, clips read back for editing, frame and sample masks.
"""

import os
import wave

import numpy as np
import pytest
from PIL import Image

from configs import common
from diffax.pipeline import images
from diffax.pipeline import masks
from diffax.pipeline import media
from diffax.pipeline import sounds
from diffax.pipeline import videos


def data_config(kind, **fields):
  c = common.base_config()
  defaults = {"video": dict(num_frames=3, image_size=4), "audio": dict(length=64,
                                                                      sample_rate=8000)}
  c.data.update(dict(defaults.get(kind, {}), kind=kind, **fields))
  return c.data


def clips(n=2, t=3, size=4, seed=0):
  """[n, t, size, size, 1] clips whose every frame differs (GIF writers merge equal frames)."""
  x = np.random.default_rng(seed).integers(0, 256, (n, t, size, size, 1)).astype(np.float32)
  return x / 127.5 - 1.0


def test_video_samples_are_a_frame_grid_a_gif_and_the_floats(tmp_path):
  x = clips()
  png, npz, gif = media.save_samples(str(tmp_path / "s.png"), x, data_config("video"), ncols=2)
  assert (npz, gif) == (str(tmp_path / "s.npz"), str(tmp_path / "s.gif"))
  np.testing.assert_array_equal(np.load(npz)["samples"], x)
  with Image.open(png) as im:  # row i is clip i, column t is frame t (cells scaled 8x to 32)
    grid = np.asarray(im)
  for i in range(2):
    for t in range(3):
      cell = grid[1 + i * 33:1 + i * 33 + 32:8, 1 + t * 33:1 + t * 33 + 32:8]
      np.testing.assert_array_equal(cell, images.to_uint8(x[i, t, ..., 0]))
  frames = videos.read_gif(gif, channels=1)  # frame t tiles frame t of both clips
  assert frames.shape[0] == 3
  for t in range(3):
    want = images.make_grid(x[:, t], ncols=2)
    np.testing.assert_array_equal(images.to_uint8(frames[t]), want)
  with Image.open(gif) as im:
    assert im.info["duration"] == 100 and im.info["loop"] == 0  # 10 frames/s, looping


def tone(freq, length=2048, rate=8000, amplitude=0.5):
  return amplitude * np.sin(2 * np.pi * freq * np.arange(length) / rate)


def test_audio_samples_are_wav_files_and_panels(tmp_path):
  x = np.stack([tone(500), tone(1500)])[..., None].astype(np.float32)  # [2, 2048, 1]
  png, npz, wav = media.save_samples(str(tmp_path / "s.png"), x,
                                     data_config("audio", length=2048))
  np.testing.assert_array_equal(np.load(npz)["samples"], x)
  joined, rate = sounds.read_wav(wav)
  gap = round(sounds.GAP_SECONDS * 8000)
  assert rate == 8000 and joined.shape == (2 * 2048 + gap, 1)
  np.testing.assert_allclose(joined[:2048], x[0], atol=1 / 32768)
  assert not joined[2048:2048 + gap].any()
  np.testing.assert_allclose(joined[2048 + gap:], x[1], atol=1 / 32768)
  single, _ = sounds.read_wav(str(tmp_path / "s_wav" / "0001.wav"))
  np.testing.assert_allclose(single, x[1], atol=1 / 32768)
  with wave.open(wav) as f:
    assert (f.getsampwidth(), f.getnchannels()) == (2, 1)
  with Image.open(png) as im:
    picture = np.asarray(im)
  height = sounds.WAVE_HEIGHT + sounds.SPECTRUM_HEIGHT
  assert picture.shape == (height + 4, 2 * sounds.PANEL_WIDTH + 6, 3)
  # In each panel's spectrogram the brightest row is the tone's: 500 Hz and 1500 Hz of a
  # 4 kHz band drawn top (4 kHz) to bottom (0 Hz).
  for i, freq in enumerate((500, 1500)):
    x0 = 2 + i * (sounds.PANEL_WIDTH + 2)
    spectrum = picture[2 + sounds.WAVE_HEIGHT:2 + height, x0:x0 + sounds.PANEL_WIDTH]
    row = np.argmax(spectrum.astype(int).sum(axis=(1, 2)))
    assert abs((1 - row / sounds.SPECTRUM_HEIGHT) * 4000 - freq) < 4000 / sounds.SPECTRUM_HEIGHT * 2
    # The waveform spans +-0.5 around the middle of its strip.
    wave_strip = picture[2:2 + sounds.WAVE_HEIGHT, x0:x0 + sounds.PANEL_WIDTH]
    drawn = np.flatnonzero(np.any(wave_strip[..., 2] == 160, axis=1))
    assert abs(drawn.min() - sounds.WAVE_HEIGHT / 4) <= 1.5
    assert abs(drawn.max() - 3 * sounds.WAVE_HEIGHT / 4) <= 1.5


def test_spectrogram_of_a_tone_peaks_at_its_bin():
  db = sounds.spectrogram(tone(1000))  # [129, frames], bins of 8000 / 256 = 31.25 Hz
  assert db.shape[0] == 129 and db.max() == 0.0
  assert np.all(np.argmax(db, axis=0) == 32)


def test_clips_are_read_back_for_editing(tmp_path):
  video_cfg = data_config("video")
  x = clips(n=1)
  gif = videos.save_gif(str(tmp_path / "clip.gif"), [images.to_uint8(f) for f in x[0]])
  np.testing.assert_allclose(media.load(gif, video_cfg, name="--init_image"),
                             np.round((x + 1) * 127.5) / 127.5 - 1, atol=1e-6)
  np.savez(tmp_path / "clips.npz", samples=clips(n=3))
  assert media.load(str(tmp_path / "clips.npz"), video_cfg, name="--init_image").shape == (
      3, 3, 4, 4, 1)
  with pytest.raises(ValueError, match=r"--init_image=.* has shape \(1, 3, 8, 8, 1\); the "
                                       r"model's examples are \(3, 4, 4, 1\)"):
    np.savez(tmp_path / "big.npz", video=clips(n=1, size=8))
    media.load(str(tmp_path / "big.npz"), video_cfg, name="--init_image")
  with pytest.raises(ValueError, match="a video model reads .gif or .npz files"):
    media.load(_touch(tmp_path / "x.png"), video_cfg, name="--init_image")

  audio_cfg = data_config("audio")
  short = sounds.write_wav(str(tmp_path / "short.wav"), tone(440, length=40), 8000)
  clip = media.load(short, audio_cfg, name="--init_image")  # zero-padded to 64 samples
  assert clip.shape == (1, 64, 1) and not clip[0, 40:].any()
  np.testing.assert_allclose(clip[0, :40, 0], tone(440, length=40), atol=1 / 32768)
  long = sounds.write_wav(str(tmp_path / "long.wav"), tone(440, length=100), 8000)
  assert media.load(long, audio_cfg, name="--init_image").shape == (1, 64, 1)
  fast = sounds.write_wav(str(tmp_path / "fast.wav"), tone(440), 16000)
  with pytest.raises(ValueError, match="sampled at 16000 Hz; the model's clips are 8000 Hz"):
    media.load(fast, audio_cfg, name="--init_image")
  with pytest.raises(FileNotFoundError, match="--mask=.*no such file"):
    media.load(str(tmp_path / "missing.wav"), audio_cfg, name="--mask", mask=True)


def _touch(path):
  path.write_bytes(b"")
  return str(path)


def test_frame_and_sample_masks():
  shape = (8, 4, 4, 1)
  mask = masks.known_frames("0-3", shape)
  assert mask.shape == (1, 8, 4, 4, 1)
  np.testing.assert_array_equal(mask[0, :, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(masks.known_frames("0, 7", shape)[0, :, 2, 3, 0],
                                [1, 0, 0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(masks.known_frames("1-2,5", shape)[0, :, 0, 0, 0],
                                [0, 1, 1, 0, 0, 1, 0, 0])
  audio = masks.known_samples(":3,7:", (10, 1))
  assert audio.shape == (1, 10, 1)
  np.testing.assert_array_equal(audio[0, :, 0], [1, 1, 1, 0, 0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("call, match", [
    (lambda: masks.known_frames("0-8", (8, 4, 4, 1)), r"'0-8' is not a range of frames in 0..7"),
    (lambda: masks.known_frames("0-7", (8, 4, 4, 1)), "keeps all 8 frames: nothing is left"),
    (lambda: masks.known_frames("a", (8, 4, 4, 1)), "--known_frames=.a. is not a list of integers"),
    (lambda: masks.known_frames(",", (8, 4, 4, 1)), "names no frame"),
    (lambda: masks.known_frames("0", (8, 1)), "--known_frames is for video models"),
    (lambda: masks.known_samples("5", (10, 1)), "'5' is not a slice start:end"),
    (lambda: masks.known_samples("4:2", (10, 1)), "not a non-empty slice of 0..10"),
    (lambda: masks.known_samples(":", (10, 1)), "keeps all 10 samples"),
    (lambda: masks.known_samples(":3", (8, 8, 1)), "--known_samples is for audio models"),
])
def test_bad_masks_fail_naming_the_flag(call, match):
  with pytest.raises(ValueError, match=match):
    call()
