//! Image folders: PNG and JPEG files loaded as `[3, R, R]` samples in
//! [-1, 1], optionally labelled by class sub-folder; and the inverse, a grid
//! of samples as an RGB image for previews.
//!
//! Rules (docs/data.md repeats them for users):
//! - files and folders whose name starts with `.` are skipped; any other
//!   file that is not `.png`, `.jpg` or `.jpeg` (any case) is an error;
//! - every image is converted to RGB: grey is replicated to three channels,
//!   alpha is dropped (not composited), 16-bit is scaled to 8-bit;
//! - the shorter side is resized to `resolution` with a triangle (bilinear,
//!   antialiased when shrinking) filter, then the centre `resolution` ×
//!   `resolution` square is cropped;
//! - without labels every image under the folder is loaded, sub-folders
//!   included; with labels each sub-folder is a class, classes are numbered
//!   in sorted name order, and images directly in the folder are an error —
//!   unless the folder holds a labels file, `labels.csv` (header
//!   `file,label` or `file,label,class`; `file` relative to the folder, as
//!   `dtx run` writes `samples/labels.csv`), which then labels every image
//!   under it;
//! - a `labels.csv` file is never taken for an image;
//! - files load in sorted path order, so a folder always gives the same
//!   dataset.

use super::DataError;
use super::dataset::Dataset;
use super::pixels::{chw_from_rgb, resize_crop, resize_crop_with};
use image::ImageReader;
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// Loads every image under `path` as `[3, resolution, resolution]` in
/// [-1, 1]; with `labels`, class labels from its sub-folders. See the
/// module doc for the rules.
pub fn load_folder(path: &Path, resolution: usize, labels: bool) -> Result<Dataset, DataError> {
    load_folder_with_masks(path, resolution, labels, None)
}

/// [`load_folder`], with per-pixel masks from `masks`: for each image
/// `path/REL.ext` the 8-bit grayscale PNG `masks/REL.png`, whose pixel
/// values are class indices; resized and cropped as the image is, with
/// nearest-neighbour sampling so classes are never blended.
pub fn load_folder_with_masks(
    path: &Path,
    resolution: usize,
    labels: bool,
    masks: Option<&Path>,
) -> Result<Dataset, DataError> {
    if resolution == 0 {
        return Err(DataError::Invalid {
            source_name: path.display().to_string(),
            reason: "resolution must be at least 1 pixel".into(),
        });
    }
    let labels_file = path.join(LABELS_FILE);
    let (files, class_names): (Vec<(PathBuf, Option<i64>)>, Vec<String>) =
        if labels && labels_file.is_file() {
            labels_from_file(path, &labels_file)?
        } else if labels {
            let (images, folders) = list(path)?;
            if let Some(stray) = images.into_iter().next() {
                return Err(if folders.is_empty() {
                    DataError::NoClassFolders { path: path.into() }
                } else {
                    DataError::UnlabelledImage {
                        path: stray,
                        folder: path.into(),
                    }
                });
            }
            if folders.is_empty() {
                return Err(DataError::NoClassFolders { path: path.into() });
            }
            let mut files = Vec::new();
            let mut names = Vec::new();
            for (class, folder) in folders.iter().enumerate() {
                let found = images_under(folder)?;
                if found.is_empty() {
                    return Err(DataError::EmptyFolder {
                        path: folder.clone(),
                    });
                }
                files.extend(found.into_iter().map(|f| (f, Some(class as i64))));
                names.push(
                    folder
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            (files, names)
        } else {
            let found = images_under(path)?;
            if found.is_empty() {
                return Err(DataError::EmptyFolder { path: path.into() });
            }
            (found.into_iter().map(|f| (f, None)).collect(), Vec::new())
        };

    let mut samples = Vec::with_capacity(files.len() * 3 * resolution * resolution);
    for (file, _) in &files {
        let img = decode(file)?;
        let rgb = resize_crop(img.to_rgb8(), resolution as u32);
        samples.extend(chw_from_rgb(&rgb));
    }
    let masks = match masks {
        Some(dir) => {
            let mut v = Vec::with_capacity(files.len() * resolution * resolution);
            for (file, _) in &files {
                let rel = file.strip_prefix(path).unwrap_or(file);
                v.extend(load_mask(&dir.join(rel).with_extension("png"), resolution)?);
            }
            Some(v)
        }
        None => None,
    };
    Ok(Dataset {
        samples,
        sample_shape: vec![3, resolution, resolution],
        labels: labels.then(|| files.iter().map(|(_, l)| l.unwrap_or(0)).collect()),
        class_names,
        masks,
        source: path.display().to_string(),
    })
}

/// Image files with their label, and the class names by label.
type Labelled = (Vec<(PathBuf, Option<i64>)>, Vec<String>);

/// The labels file of a folder (see the module doc).
pub const LABELS_FILE: &str = "labels.csv";

/// Labels in `labels.csv` are below this (class names are kept per label, so
/// a stray 4000000000 must not size a table of four billion entries).
pub const MAX_LABEL: i64 = 1_000_000;

/// Every image under `root` with its label from `file` (a `labels.csv`), and
/// the class names by label (the `class` column, else the label's number).
fn labels_from_file(root: &Path, file: &Path) -> Result<Labelled, DataError> {
    let bad = |reason: String| DataError::Invalid {
        source_name: file.display().to_string(),
        reason,
    };
    let text = crate::util::fs::read_to_string(file).map_err(|source| DataError::Io {
        path: file.into(),
        source,
    })?;
    // Spreadsheet programs save CSV with a UTF-8 byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').map(str::trim).collect())
        .unwrap_or_default();
    if header.len() < 2 || header[0] != "file" || header[1] != "label" {
        return Err(bad(
            "the first line must be the header `file,label` (or `file,label,class`)".into(),
        ));
    }
    let mut by_file = std::collections::HashMap::new();
    let mut names: Vec<Option<(String, usize)>> = Vec::new();
    for (i, line) in lines {
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let label: i64 = match cols.get(1).and_then(|l| l.parse().ok()) {
            Some(l) if (0..MAX_LABEL).contains(&l) => l,
            Some(l) if l >= MAX_LABEL => {
                return Err(bad(format!(
                    "line {}: `{line}`: label {l} is too large; labels count classes from 0, up to {}",
                    i + 1,
                    MAX_LABEL - 1
                )));
            }
            _ => {
                return Err(bad(format!(
                    "line {}: `{line}`: the label must be an integer >= 0",
                    i + 1
                )));
            }
        };
        let k = label as usize;
        if names.len() <= k {
            names.resize(k + 1, None);
        }
        if let Some(c) = cols.get(2).filter(|c| !c.is_empty()) {
            match &names[k] {
                Some((first, at)) if first != c => {
                    return Err(bad(format!(
                        "line {}: label {label} is named `{c}`, but line {at} names it `{first}`",
                        i + 1
                    )));
                }
                Some(_) => {}
                None => names[k] = Some((c.to_string(), i + 1)),
            }
        }
        match by_file.entry(PathBuf::from(cols[0])) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let (first, at) = *e.get();
                if first != label {
                    return Err(bad(format!(
                        "line {}: `{}` has label {label}, but line {at} gives it label {first}",
                        i + 1,
                        cols[0]
                    )));
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((label, i + 1));
            }
        }
    }
    let images = images_under(root)?;
    if images.is_empty() {
        return Err(DataError::EmptyFolder { path: root.into() });
    }
    let files = images
        .into_iter()
        .map(|img| {
            let rel = img.strip_prefix(root).unwrap_or(&img).to_path_buf();
            match by_file.get(&rel) {
                Some(&(l, _)) => Ok((img, Some(l))),
                None => Err(bad(format!("no row for image `{}`", rel.display()))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names = names
        .into_iter()
        .enumerate()
        .map(|(k, n)| n.map_or_else(|| k.to_string(), |(name, _)| name))
        .collect();
    Ok((files, names))
}

/// One mask file as `[r, r]` class indices (its 8-bit gray values), resized
/// and cropped like [`resize_crop`] but with nearest-neighbour sampling, so
/// classes are never blended.
fn load_mask(file: &Path, r: usize) -> Result<Vec<i64>, DataError> {
    let crop = resize_crop_with(decode(file)?.to_luma8(), r as u32, FilterType::Nearest);
    Ok(crop.pixels().map(|p| p.0[0] as i64).collect())
}

/// Opens and decodes one image file; errors name it.
fn decode(file: &Path) -> Result<image::DynamicImage, DataError> {
    let io = |source| DataError::Io {
        path: file.into(),
        source,
    };
    ImageReader::open(file)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?
        .decode()
        .map_err(|e| DataError::CorruptImage {
            path: file.into(),
            reason: e.to_string(),
        })
}

/// The image files and the sub-folders directly in `dir`, each sorted;
/// dotfiles skipped, other files an error.
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let io = |source| DataError::Io {
        path: dir.into(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    let (mut images, mut folders) = (Vec::new(), Vec::new());
    for p in entries {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || name == LABELS_FILE {
            continue;
        }
        // Links are followed; what they lead to must be a file or a folder.
        let meta = std::fs::metadata(&p).map_err(|source| DataError::Io {
            path: p.clone(),
            source,
        })?;
        let kind = meta.file_type();
        if kind.is_dir() {
            folders.push(p);
        } else if !kind.is_file() {
            // Reading a FIFO would wait forever for a writer.
            return Err(DataError::NotRegular {
                what: format!(
                    "{}, not a regular file",
                    crate::util::fs::special_kind(&kind)
                ),
                path: p,
            });
        } else if is_image(&p) {
            images.push(p);
        } else {
            return Err(DataError::UnsupportedFile { path: p });
        }
    }
    Ok((images, folders))
}

/// Every image under `dir`, sub-folders included, in sorted path order.
/// A folder link leading back into a folder on the way down is an error
/// (it would recurse forever).
fn images_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut ancestors = Vec::new();
    images_under_from(dir, &mut ancestors)
}

fn images_under_from(dir: &Path, ancestors: &mut Vec<PathBuf>) -> Result<Vec<PathBuf>, DataError> {
    let real = std::fs::canonicalize(dir).map_err(|source| DataError::Io {
        path: dir.into(),
        source,
    })?;
    if ancestors.contains(&real) {
        return Err(DataError::NotRegular {
            path: dir.into(),
            what: format!(
                "a link back to `{}`, which contains it (a loop)",
                real.display()
            ),
        });
    }
    ancestors.push(real);
    let (mut images, folders) = list(dir)?;
    for f in folders {
        images.extend(images_under_from(&f, ancestors)?);
    }
    ancestors.pop();
    images.sort();
    Ok(images)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| e == "png" || e == "jpg" || e == "jpeg")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// A fresh, empty folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("dtx-data-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(rgb))
    }

    #[test]
    fn loads_resizes_and_crops_to_chw() {
        let dir = TempDir::new("plain");
        // 8 × 4: left half red, right half blue. Shorter side 4 → 4: no
        // resize; centre crop keeps x = 2..6, so columns 0–1 red, 2–3 blue.
        let mut img = solid(8, 4, [255, 0, 0]);
        for y in 0..4 {
            for x in 4..8 {
                img.put_pixel(x, y, Rgb([0, 0, 255]));
            }
        }
        img.save(dir.0.join("b.png")).unwrap();
        // Grey 16 × 16 → 4 × 4, converted to RGB.
        GrayImage::from_pixel(16, 16, Luma([255]))
            .save(dir.0.join("a.png"))
            .unwrap();
        std::fs::write(dir.0.join(".DS_Store"), b"junk").unwrap();

        let d = load_folder(&dir.0, 4, false).unwrap();
        assert_eq!((d.len(), d.sample_shape.as_slice()), (2, &[3, 4, 4][..]));
        assert!(
            d.sample(0).iter().all(|&v| v == 1.0),
            "a.png: white, grey → RGB"
        );
        let b = d.sample(1);
        let at = |c: usize, y: usize, x: usize| b[(c * 4 + y) * 4 + x];
        assert_eq!([at(0, 1, 0), at(2, 1, 0)], [1.0, -1.0], "red on the left");
        assert_eq!([at(0, 1, 3), at(2, 1, 3)], [-1.0, 1.0], "blue on the right");
        assert_eq!(d.labels, None);
    }

    #[test]
    fn labels_come_from_sorted_sub_folders() {
        let dir = TempDir::new("labels");
        for (class, n) in [("zebra", 2), ("ant", 1)] {
            std::fs::create_dir(dir.0.join(class)).unwrap();
            for i in 0..n {
                solid(6, 6, [10, 20, 30])
                    .save(dir.0.join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let d = load_folder(&dir.0, 3, true).unwrap();
        assert_eq!(d.class_names, ["ant", "zebra"]);
        assert_eq!(d.labels, Some(vec![0, 1, 1]));
        assert_eq!(load_folder(&dir.0, 3, false).unwrap().len(), 3);
    }

    /// A `labels.csv` labels the images under the folder (class names
    /// from its `class` column), is not read as an image, and an image it
    /// has no row for is an error naming both.
    #[test]
    fn a_labels_file_labels_the_folder() {
        let dir = TempDir::new("labels-file");
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        for f in ["a.png", "sub/b.png"] {
            solid(4, 4, [1, 2, 3]).save(dir.0.join(f)).unwrap();
        }
        std::fs::write(
            dir.0.join("labels.csv"),
            "file,label,class\nsub/b.png,0,cat\na.png,2,dog\n",
        )
        .unwrap();
        let d = load_folder(&dir.0, 2, true).unwrap();
        assert_eq!(d.labels, Some(vec![2, 0]));
        assert_eq!(d.class_names, ["cat", "1", "dog"]);
        assert_eq!(load_folder(&dir.0, 2, false).unwrap().len(), 2);
        std::fs::write(dir.0.join("labels.csv"), "file,label\na.png,1\n").unwrap();
        let e = load_folder(&dir.0, 2, true).unwrap_err().to_string();
        assert!(e.contains("labels.csv") && e.contains("sub/b.png"), "{e}");
        std::fs::write(dir.0.join("labels.csv"), "name,class\n").unwrap();
        let e = load_folder(&dir.0, 2, true).unwrap_err().to_string();
        assert!(e.contains("header"), "{e}");
    }

    /// A byte-order mark is read past; a file given two labels, a label
    /// given two names and a label past [`MAX_LABEL`] are errors naming the
    /// lines.
    #[test]
    fn labels_file_bom_conflicts_and_huge_labels() {
        let dir = TempDir::new("labels-hostile");
        solid(4, 4, [1, 2, 3]).save(dir.0.join("a.png")).unwrap();
        let csv = dir.0.join("labels.csv");
        std::fs::write(&csv, "\u{feff}file,label\na.png,1\n").unwrap();
        assert_eq!(load_folder(&dir.0, 2, true).unwrap().labels, Some(vec![1]));
        std::fs::write(&csv, "file,label\na.png,1\na.png,1\n").unwrap();
        assert!(
            load_folder(&dir.0, 2, true).is_ok(),
            "a repeated identical row is fine"
        );
        std::fs::write(&csv, "file,label\na.png,1\na.png,2\n").unwrap();
        let e = load_folder(&dir.0, 2, true).unwrap_err().to_string();
        assert!(
            e.contains("line 3: `a.png` has label 2, but line 2 gives it label 1"),
            "{e}"
        );
        std::fs::write(&csv, "file,label,class\na.png,1,cat\nb.png,1,dog\n").unwrap();
        let e = load_folder(&dir.0, 2, true).unwrap_err().to_string();
        assert!(
            e.contains("label 1 is named `dog`, but line 2 names it `cat`"),
            "{e}"
        );
        std::fs::write(&csv, "file,label\na.png,4000000000\n").unwrap();
        let e = load_folder(&dir.0, 2, true).unwrap_err().to_string();
        assert!(e.contains("label 4000000000 is too large"), "{e}");
    }

    /// A FIFO would block the reader forever and a folder link to an
    /// ancestor would recurse forever: both are errors naming the entry.
    #[cfg(unix)]
    #[test]
    fn fifos_and_link_loops_are_errors() {
        let dir = TempDir::new("special");
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        solid(4, 4, [1, 2, 3])
            .save(dir.0.join("sub/a.png"))
            .unwrap();
        std::os::unix::fs::symlink(&dir.0, dir.0.join("sub/loop")).unwrap();
        let e = load_folder(&dir.0, 2, false).unwrap_err().to_string();
        assert!(e.contains("sub/loop") && e.contains("(a loop)"), "{e}");
        std::fs::remove_file(dir.0.join("sub/loop")).unwrap();
        let fifo = dir.0.join("sub/b.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = load_folder(&dir.0, 2, false).unwrap_err().to_string();
            assert!(e.contains("b.png") && e.contains("FIFO"), "{e}");
        }
    }

    /// Masks come from `masks/REL.png`, resized with nearest sampling (the
    /// classes survive exactly) and cropped as the image; a missing mask
    /// file is an error naming it.
    #[test]
    fn masks_load_beside_their_images() {
        let dir = TempDir::new("masks");
        let (images, masks) = (dir.0.join("images"), dir.0.join("masks"));
        std::fs::create_dir_all(images.join("sub")).unwrap();
        std::fs::create_dir_all(masks.join("sub")).unwrap();
        solid(8, 4, [10, 20, 30])
            .save(images.join("sub/a.jpg"))
            .unwrap();
        // 8 wide, 4 high: class = 2 on the left half, 5 on the right
        let m = image::GrayImage::from_fn(8, 4, |x, _| image::Luma([if x < 4 { 2 } else { 5 }]));
        m.save(masks.join("sub/a.png")).unwrap();
        let d = load_folder_with_masks(&images, 2, false, Some(&masks)).unwrap();
        // shorter side 4 → 2: 4 × 2, centre crop 2 × 2 = columns 1, 2 of 4
        assert_eq!(d.masks, Some(vec![2, 5, 2, 5]));
        std::fs::remove_file(masks.join("sub/a.png")).unwrap();
        let e = load_folder_with_masks(&images, 2, false, Some(&masks)).unwrap_err();
        assert!(e.to_string().contains("a.png"), "{e}");
    }

    #[test]
    fn jpeg_loads() {
        let dir = TempDir::new("jpeg");
        solid(10, 10, [200, 200, 200])
            .save(dir.0.join("x.JPG"))
            .unwrap();
        let d = load_folder(&dir.0, 5, false).unwrap();
        assert!(
            d.samples
                .iter()
                .all(|v| (v - (200.0 / 127.5 - 1.0)).abs() < 0.05)
        );
    }

    #[test]
    fn errors_name_the_file_or_folder() {
        let dir = TempDir::new("errors");
        let err = load_folder(&dir.0, 4, false).unwrap_err();
        assert!(
            matches!(&err, DataError::EmptyFolder { path } if *path == dir.0),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("no .png, .jpg or .jpeg images in this folder")
        );

        std::fs::write(dir.0.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = load_folder(&dir.0, 4, false).unwrap_err();
        assert!(
            matches!(&err, DataError::CorruptImage { path, .. } if path.ends_with("broken.png")),
            "{err}"
        );
        assert!(
            err.to_string().contains("broken.png: not a readable image"),
            "{err}"
        );
        std::fs::remove_file(dir.0.join("broken.png")).unwrap();

        std::fs::write(dir.0.join("notes.txt"), b"hi").unwrap();
        let err = load_folder(&dir.0, 4, false).unwrap_err();
        assert!(
            matches!(&err, DataError::UnsupportedFile { path } if path.ends_with("notes.txt")),
            "{err}"
        );
        std::fs::remove_file(dir.0.join("notes.txt")).unwrap();

        solid(4, 4, [0, 0, 0]).save(dir.0.join("img.png")).unwrap();
        let err = load_folder(&dir.0, 4, true).unwrap_err();
        assert!(matches!(err, DataError::NoClassFolders { .. }), "{err}");

        std::fs::create_dir(dir.0.join("cats")).unwrap();
        let err = load_folder(&dir.0, 4, true).unwrap_err();
        assert!(
            matches!(&err, DataError::UnlabelledImage { path, .. } if path.ends_with("img.png")),
            "{err}"
        );
        std::fs::remove_file(dir.0.join("img.png")).unwrap();
        let err = load_folder(&dir.0, 4, true).unwrap_err();
        assert!(
            matches!(&err, DataError::EmptyFolder { path } if path.ends_with("cats")),
            "{err}"
        );

        let d = load_folder(&dir.0.join("missing"), 4, false).unwrap_err();
        assert!(matches!(d, DataError::Io { .. }));
    }

    #[test]
    fn limit_past_a_folder_names_it() {
        let dir = TempDir::new("limit");
        for i in 0..3 {
            solid(4, 4, [i * 50, 0, 0])
                .save(dir.0.join(format!("{i}.png")))
                .unwrap();
        }
        let err = load_folder(&dir.0, 4, false)
            .unwrap()
            .limit(5, 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: has 3 samples, fewer than the 5 asked for by `limit`",
                dir.0.display()
            )
        );
    }
}
