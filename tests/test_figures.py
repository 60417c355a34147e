import matplotlib.pyplot as plt

from count01.present.figures import save


def test_save_lays_out_once_writes_png_and_svg_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots(layout="tight")
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title")
    engine, laid_out = fig.get_layout_engine(), []
    run = engine.execute
    engine.execute = lambda f: (laid_out.append(f), run(f))  # count the layout passes
    stem = tmp_path / "figs" / "lr=0.01"  # a configuration id with a dot: no with_suffix
    paths = save(fig, stem, dpi=50)
    assert paths == [tmp_path / "figs" / "lr=0.01.png", tmp_path / "figs" / "lr=0.01.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a title" in paths[1].read_text()  # SVG text kept as text
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["lr=0.01.png", "lr=0.01.svg"]
    assert laid_out == [fig] and not plt.fignum_exists(fig.number)  # laid out once, closed
