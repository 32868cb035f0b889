"""The README's screenshots of a study: its report page and optuna-dashboard on its storage.

    python docs/screenshots.py ablations/design_choices.yaml reports/design-choices/report.html

Headless Chromium through Selenium with Debian's chromedriver (as the tests use it); writes
docs/images/report.png and docs/images/dashboard.png.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from attnlab.sweep.dashboard import dashboard_server
from attnlab.sweep.spec import load_study
from attnlab.sweep.storage import storage_url

IMAGES = Path(__file__).resolve().parent / "images"


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main(study_file: str, report_page: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    driver = browser(1400, 1000)
    try:
        driver.get(Path(report_page).resolve().as_uri())
        driver.save_screenshot(str(IMAGES / "report.png"))
        study = load_study(study_file)
        server = dashboard_server(storage_url(study), port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        driver.get(f"http://127.0.0.1:{server.server_port}/dashboard/")
        time.sleep(2)
        link = next(e for e in driver.find_elements("tag name", "a") if study.name in e.text)
        link.click()  # the study's own page: history, trials
        time.sleep(4)
        driver.save_screenshot(str(IMAGES / "dashboard.png"))
        server.shutdown()
    finally:
        driver.quit()
    print(f"-> {IMAGES / 'report.png'}, {IMAGES / 'dashboard.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
