#!/usr/bin/env bash
# Installs the Debian packages aigc reads data from, when running as root with apt; otherwise
# says which datasets are unavailable and how to point aigc at the files instead. Idempotent.
set -u
PACKAGES=(dataset-fashion-mnist r-cran-janeaustenr fortunes fortunes-zh chromium fonts-noto-cjk
          debian-faq debian-faq-zh-cn espeak-ng flite postgresql libcairo2)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
      echo "setup: apt-get could not install ${missing[*]}; the datasets below stay unavailable"
    }
  fi
fi

for pkg in "${missing[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
  case "$pkg" in
    dataset-fashion-mnist)
      echo "setup: dataset 'fashion-mnist' is unavailable (Debian package dataset-fashion-mnist is not"
      echo "       installed and this is not root with apt). Install it, or put the four IDX files"
      echo "       (train-images-idx3-ubyte.gz, ...) in a folder and export AIGC_FASHION_MNIST_DIR=that/folder" ;;
    r-cran-janeaustenr) echo "setup: text corpus 'austen' is unavailable (Debian package r-cran-janeaustenr)" ;;
    fortunes) echo "setup: text corpus 'fortunes' is unavailable (Debian package fortunes)" ;;
    fortunes-zh) echo "setup: text corpus 'tang-poems' is unavailable (Debian package fortunes-zh)" ;;
    chromium)
      echo "setup: Debian package chromium is not installed; the studio's browser test will be skipped" ;;
    fonts-noto-cjk)
      echo "setup: Debian package fonts-noto-cjk is not installed; the browser test's Chinese check fails" ;;
    debian-faq|debian-faq-zh-cn)
      echo "setup: the assistant's demo knowledge base ($pkg) is unavailable; index your own folder" ;;
    espeak-ng|flite) echo "setup: speech synthesis voice $pkg is unavailable (Debian package $pkg)" ;;
    postgresql) echo "setup: PostgreSQL is not installed; the PostgreSQL test tier will be skipped" ;;
    *) echo "setup: Debian package $pkg is not installed; the data it provides is unavailable" ;;
  esac
done
exit 0
