import Foundation

/// The manifest's preprocessing for image models trained on small grayscale grids (the demo: 8x8
/// cells holding 0..16, the count of ink pixels in each 4x4 block of a 32x32 bitmap), applied as
/// edgepack.demo.preprocess does: x * scale, bilinear resize (align_corners=false) to resize,
/// (x - mean) / std, NCHW with one channel.
struct ImagePreprocessing {
    let sourceWidth: Int
    let sourceHeight: Int
    let sourceMax: Int
    let scale: Float
    let resizeHeight: Int
    let resizeWidth: Int
    let mean: Float
    let std: Float

    private static let samplesPerCell = 4
    private static let squarePerInk: Float = 1.25 // the digit fills about 80% of the square, as in the data set
    private static let minContrast: Float = 0.15

    init(json: JSONObject) throws {
        typealias K = ManifestKeys
        let source = try json.string(K.preSource)
        let regex = try NSRegularExpression(pattern: K.sourcePattern)
        guard let match = regex.firstMatch(in: source, range: NSRange(source.startIndex..., in: source)),
              let width = Int(Self.group(match, 1, in: source)),
              let height = Int(Self.group(match, 2, in: source)),
              let top = Int(Self.group(match, 3, in: source)) else {
            throw DemoError.invalid("preprocessing.source '\(source)' is not a grayscale grid this app can make from a photo")
        }
        guard try json.string(K.preResizeMode) == "bilinear" else { throw DemoError.invalid("unsupported preprocessing: resize_mode must be bilinear") }
        guard try !json.bool(K.preAlignCorners) else { throw DemoError.invalid("unsupported preprocessing: align_corners must be false") }
        guard try json.string(K.preLayout) == "NCHW" else { throw DemoError.invalid("unsupported preprocessing: layout must be NCHW") }
        let resize = try json.ints(K.preResize)
        guard resize.count == 2 else { throw DemoError.invalid("unsupported preprocessing: resize must be [height, width]") }
        sourceWidth = width
        sourceHeight = height
        sourceMax = top
        scale = Float(try json.double(K.preScale))
        resizeHeight = resize[0]
        resizeWidth = resize[1]
        mean = Float(try json.double(K.preMean))
        std = Float(try json.double(K.preStd))
    }

    private static func group(_ match: NSTextCheckingResult, _ index: Int, in text: String) -> String {
        guard let range = Range(match.range(at: index), in: text) else { return "" }
        return String(text[range])
    }

    /// Source grid values (row-major, sourceHeight x sourceWidth) -> model input (1 x 1 x resizeHeight x resizeWidth).
    func modelInput(source: [Float]) -> [Float] {
        precondition(source.count == sourceWidth * sourceHeight, "expected \(sourceHeight)x\(sourceWidth) source values")
        let scaled = source.map { $0 * scale }
        let resized = Self.resizeBilinear(scaled, inHeight: sourceHeight, inWidth: sourceWidth, outHeight: resizeHeight, outWidth: resizeWidth)
        return resized.map { ($0 - mean) / std }
    }

    /// A photo's luminance (row-major, 0 = black ... 1 = white) -> the source grid, made the way the training
    /// data was: the ink is cropped to a centred square with a margin, sampled as a (4 x sourceHeight) x
    /// (4 x sourceWidth) bitmap, and each cell counts its ink samples (scaled to 0...sourceMax).
    func source(luminance: [Float], width: Int, height: Int) -> [Float] {
        let ink = Self.inkMask(luminance, width: width, height: height)
        var left = width, top = height, right = -1, bottom = -1
        for y in 0..<height {
            for x in 0..<width where ink[y * width + x] {
                left = min(left, x); right = max(right, x); top = min(top, y); bottom = max(bottom, y)
            }
        }
        var grid = [Float](repeating: 0, count: sourceWidth * sourceHeight)
        guard right >= 0 else { return grid }
        let side = Float(max(right - left + 1, bottom - top + 1)) * Self.squarePerInk
        let originX = Float(left + right + 1) / 2 - side / 2
        let originY = Float(top + bottom + 1) / 2 - side / 2
        let sub = Self.samplesPerCell
        for row in 0..<sourceHeight {
            for col in 0..<sourceWidth {
                var count = 0
                for sy in 0..<sub {
                    for sx in 0..<sub {
                        let x = Int(originX + (Float(col * sub + sx) + 0.5) * side / Float(sourceWidth * sub))
                        let y = Int(originY + (Float(row * sub + sy) + 0.5) * side / Float(sourceHeight * sub))
                        if x >= 0, x < width, y >= 0, y < height, ink[y * width + x] { count += 1 }
                    }
                }
                grid[row * sourceWidth + col] = (Float(count * sourceMax) / Float(sub * sub)).rounded()
            }
        }
        return grid
    }

    /// Ink is whatever differs from the background, which the image's border shows: dark on light or light on dark.
    static func inkMask(_ luminance: [Float], width: Int, height: Int) -> [Bool] {
        var borderSum: Float = 0
        var borderCount = 0
        for y in 0..<height {
            for x in 0..<width where x == 0 || y == 0 || x == width - 1 || y == height - 1 {
                borderSum += luminance[y * width + x]
                borderCount += 1
            }
        }
        let background = borderSum / Float(max(borderCount, 1))
        let lightBackground = background >= 0.5
        let extreme = lightBackground ? (luminance.min() ?? 0) : (luminance.max() ?? 1)
        guard abs(background - extreme) >= minContrast else { return [Bool](repeating: false, count: luminance.count) }
        let threshold = (background + extreme) / 2
        return luminance.map { lightBackground ? $0 < threshold : $0 > threshold }
    }

    /// PyTorch's F.interpolate(mode="bilinear", align_corners=False) for one channel, row-major.
    static func resizeBilinear(_ src: [Float], inHeight: Int, inWidth: Int, outHeight: Int, outWidth: Int) -> [Float] {
        var out = [Float](repeating: 0, count: outHeight * outWidth)
        let scaleH = Float(inHeight) / Float(outHeight)
        let scaleW = Float(inWidth) / Float(outWidth)
        for oy in 0..<outHeight {
            let sy = max((Float(oy) + 0.5) * scaleH - 0.5, 0)
            let y0 = Int(sy)
            let y1 = y0 < inHeight - 1 ? y0 + 1 : y0
            let ly = sy - Float(y0)
            for ox in 0..<outWidth {
                let sx = max((Float(ox) + 0.5) * scaleW - 0.5, 0)
                let x0 = Int(sx)
                let x1 = x0 < inWidth - 1 ? x0 + 1 : x0
                let lx = sx - Float(x0)
                let upper = (1 - lx) * src[y0 * inWidth + x0] + lx * src[y0 * inWidth + x1]
                let lower = (1 - lx) * src[y1 * inWidth + x0] + lx * src[y1 * inWidth + x1]
                out[oy * outWidth + ox] = (1 - ly) * upper + ly * lower
            }
        }
        return out
    }
}
