// A study opened on its own (priors, links from the desk, key images shared in a consult): the
// image viewer filling the page. `?series=` opens that series first; `&instance=` (and
// `&frame=` for a multi-frame instance) that image of it.
import { useLocation } from "preact-iso";
import { ImageViewer } from "../../viewers/image/ImageViewer";
import "./StudyViewer.css";

export function StudyViewer(props: { studyUid?: string }) {
  const { query } = useLocation();
  if (!props.studyUid) return null;
  const frame = Number(query.frame);
  return (
    <section class="study-viewer-page">
      <ImageViewer
        studyInstanceUid={props.studyUid}
        seriesInstanceUid={query.series}
        instanceUid={query.instance}
        frame={Number.isInteger(frame) && frame > 0 ? frame : undefined}
        autoFocus
      />
    </section>
  );
}
