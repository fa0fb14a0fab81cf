"""Drives the console's Send page in headless Chromium through WebDriver (Debian's
python3-selenium and chromium-driver), for tests/agent/console.rs.

Usage: console_send.py LOGIN_URL RECIPIENT FILE SCREENSHOT
Logs in through the one-time link, opens the Send page, ticks RECIPIENT, adds FILE,
screenshots the filled form, submits it and lands on the outbox. There it prints
"ON-OUTBOX" with the item's state and waits for a line on stdin (the test starts the
recipient then), then waits, without reloading, until the live updates show the item
delivered, and prints "LIVE-DELIVERED" and the page.
"""

import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main():
    login, recipient, path, shot = sys.argv[1:5]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,700"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(login + "&next=/send")
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.NAME, "file"))
        box = driver.find_element(By.CSS_SELECTOR, "input[name=to][value='%s']" % recipient)
        box.click()
        driver.find_element(By.NAME, "file").send_keys(path)
        driver.save_screenshot(shot)
        driver.find_element(By.CSS_SELECTOR, "form[action='/send'] button[type=submit]").click()
        try:
            WebDriverWait(driver, 60).until(lambda d: d.current_url.endswith("/outbox"))
        except Exception:
            sys.stderr.write("did not reach the outbox: %s\n%s\n" % (driver.current_url, driver.page_source))
            raise
        # A mark that a reload would wipe: the page must change under it.
        driver.execute_script("window.conduitMark = 1;")
        state = driver.find_element(By.CSS_SELECTOR, "tbody tr .state").text
        print("ON-OUTBOX " + state, flush=True)
        sys.stdin.readline()
        delivered = lambda d: d.find_elements(By.CSS_SELECTOR, "tbody tr .state.ok")
        try:
            WebDriverWait(driver, 90).until(delivered)
        except Exception:
            sys.stderr.write("not delivered on the page:\n%s\n" % driver.page_source)
            raise
        if driver.execute_script("return window.conduitMark;") != 1:
            sys.stderr.write("the page was reloaded\n")
            sys.exit(1)
        print("LIVE-DELIVERED", flush=True)
        print(driver.page_source)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
