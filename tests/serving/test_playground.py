"""The playground page (``GET /``) driven in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, set up
by ``make system-deps``) through Selenium: a continuation streamed token by token with its probabilities and the
alternatives at a clicked token, sentences compared with an embedding model, a file transcribed by Whisper. Each
page's result equals the library's; a screenshot of each is kept under ``test-artifacts/``."""

from pathlib import Path

import httpx
import numpy as np
import pytest

from turboseq.serving.process import ServerProcess

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    yield driver
    driver.quit()


def _chromium(*extra: str):
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium is not installed: run `make system-deps` (Debian: chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a microphone that beeps
        *extra,
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _wait(driver, predicate, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: predicate(d))


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"playground-{name}.png"))


def _fill(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def test_generation_streams_tokens_with_their_probabilities(browser, gpt2_text):
    from selenium.webdriver.common.by import By

    model, _, _, path = gpt2_text
    srv = ServerProcess(path, "--max-batch-size", "4")
    try:
        browser.get(srv.url + "/")
        assert "turboseq playground" in browser.title and "text-generation" in browser.page_source
        prompt = "The train to Berlin leaves at"
        _fill(browser, "input", prompt)
        _fill(browser, "max", "12")
        browser.find_element(By.ID, "run").click()
        _wait(browser, lambda d: "done after" in d.find_element(By.ID, "status").text)
        expected = model.generate_text([prompt], max_new_tokens=12)[0]
        output = browser.find_element(By.ID, "output")
        assert output.get_attribute("data-text") == expected
        tokens = output.find_elements(By.CLASS_NAME, "tok")
        assert len(tokens) >= 4 and "".join(t.get_attribute("textContent") for t in tokens) == expected
        assert all("background" in (t.get_attribute("style") or "") for t in tokens)  # coloured by probability
        target = next(t for t in tokens if t.get_attribute("textContent").strip())
        target.click()
        table = browser.find_element(By.ID, "alternatives")
        assert "At this position" in table.text and len(table.find_elements(By.TAG_NAME, "tr")) == 6
        assert "picked" in target.get_attribute("class")
        links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "footer a")]
        assert links[0] == srv.url + "/metrics" and httpx.get(links[0]).status_code == 200
        _shot(browser, "generation")
    finally:
        srv.stop()


def test_embedding_page_compares_sentences(browser, minilm):
    from selenium.webdriver.common.by import By

    model, _, _, path = minilm
    srv = ServerProcess(path, "--max-batch-size", "4")
    try:
        browser.get(srv.url + "/")
        lines = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
        _fill(browser, "input", "\n".join(lines))
        browser.find_element(By.ID, "run").click()
        _wait(browser, lambda d: d.find_elements(By.CLASS_NAME, "score"))
        shown = [float(c.text) for c in browser.find_elements(By.CLASS_NAME, "score")]
        vectors = model.embed(lines)
        expected = [float(vectors[0] @ v) for v in vectors[1:]]  # normalized vectors
        assert shown == pytest.approx(expected, abs=1e-4)
        _shot(browser, "embedding")
    finally:
        srv.stop()


def test_speech_page_transcribes_a_file(browser, whisper, clips):
    from selenium.webdriver.common.by import By

    from turboseq.bench.speech import whisper_ct2_dir

    srv = ServerProcess(whisper_ct2_dir(), "--max-batch-size", "4")
    try:
        browser.get(srv.url + "/")
        browser.find_element(By.ID, "file").send_keys(str(clips[0]))
        browser.find_element(By.ID, "run").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "text"))
        expected = whisper.transcribe(str(clips[0])).text.strip()
        assert browser.find_element(By.ID, "text").text.strip() == expected
        assert "words with timestamps" in browser.find_element(By.ID, "result").text
        _shot(browser, "speech")
        # the microphone: a 2 s recording (WebM/Opus from the browser) is uploaded and decoded
        import time

        browser.find_element(By.ID, "mic").click()
        _wait(browser, lambda d: d.find_element(By.ID, "mic").text == "Stop", 10)
        time.sleep(2)
        browser.find_element(By.ID, "mic").click()
        _wait(browser, lambda d: " s of audio in " in d.find_element(By.ID, "status").text)
        seconds = float(browser.find_element(By.ID, "status").text.split(" s of audio")[0])
        assert 1.0 < seconds < 4.0
    finally:
        srv.stop()


def test_classifier_page_labels_each_line(browser, tmp_path):
    from selenium.webdriver.common.by import By

    import turboseq
    from tests.serving.test_tei import _bert_classifier

    _bert_classifier(tmp_path, 3, seed=2)
    model = turboseq.load(tmp_path)
    srv = ServerProcess(tmp_path, "--max-batch-size", "4")
    try:
        browser.get(srv.url + "/")
        lines = ["w5 w9 w17", "w100 w101"]  # two lines: two texts, not one pair
        _fill(browser, "input", "\n".join(lines))
        browser.find_element(By.ID, "run").click()
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result tr")) == 3)
        cells = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#result tr")[1:]
        ]
        expected = model.classify(lines)
        assert [c[1] for c in cells] == [e["label"] for e in expected]
        assert [float(c[2]) for c in cells] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    finally:
        srv.stop()


def test_live_button_streams_the_microphone(tmp_path, waves):
    """Chromium's fake microphone plays a spoken sentence: the Live button streams it over /v1/audio/live and the
    confirmed words appear as they come."""
    import time

    from selenium.webdriver.common.by import By

    from tests.helpers import wav_bytes
    from turboseq.bench.quality import word_error_rate
    from turboseq.bench.speech import SENTENCES, whisper_ct2_dir

    spoken = tmp_path / "spoken.wav"  # the sentence, then silence (Chromium loops the file)
    spoken.write_bytes(wav_bytes(np.concatenate([np.zeros(8000, np.float32), waves[0], np.zeros(48000, np.float32)])))
    driver = _chromium(f"--use-file-for-fake-audio-capture={spoken}")
    srv = ServerProcess(whisper_ct2_dir(), "--max-batch-size", "4")
    try:
        driver.get(srv.url + "/")
        driver.find_element(By.ID, "live").click()
        _wait(driver, lambda d: "listening" in d.find_element(By.ID, "status").text, 30)
        _wait(driver, lambda d: len(d.find_element(By.ID, "confirmed").text.split()) >= 4, 60)  # words while live
        time.sleep(len(waves[0]) / 16000 + 1)
        driver.find_element(By.ID, "live").click()
        _wait(driver, lambda d: "done" in d.find_element(By.ID, "status").text, 60)
        text = driver.find_element(By.ID, "confirmed").text
        first = " ".join(text.split()[: len(SENTENCES[0].split())])
        assert word_error_rate([SENTENCES[0]], [first]) <= 0.25, text
        _shot(driver, "speech-live")
    finally:
        srv.stop()
        driver.quit()
